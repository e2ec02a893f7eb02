"""The served model's identity for /ready: its md5, what the nearest dvc.lock records of it, and the file on
disk now against the model loaded (ModelWatch). Used by pipeline/serve.py."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from pipeline.checkpoint import Checkpoint


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dvc_lock_record(model: Path) -> dict | None:
    """What the nearest dvc.lock above the model says of it: {dvc_lock, stage, md5}, or None."""
    from ruamel.yaml import YAML

    model = Path(os.path.abspath(model))  # not resolve(): a model DVC links from its cache stays in the checkout
    for folder in model.parents:
        lock = folder / "dvc.lock"
        if not lock.is_file():
            continue
        try:
            stages = (YAML(typ="safe").load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
        except Exception:  # a damaged lock file says nothing about the model; the server still serves
            return None
        relative = model.relative_to(folder).as_posix()
        for name, stage in stages.items():
            for out in (stage or {}).get("outs", []) or []:
                if isinstance(out, dict) and out.get("path") == relative and "md5" in out:
                    return {"dvc_lock": str(lock), "stage": name, "md5": out["md5"]}
        return None
    return None


def model_identity(path: Path, ckpt: Checkpoint, md5: str | None = None) -> dict:
    md5 = md5 or _file_md5(path)
    record = dvc_lock_record(path)
    if record is not None:
        record["matches_file"] = record["md5"] == md5
    cfg = ckpt.model.cfg
    return {"path": os.path.abspath(path), "md5": md5, "dvc": record, "labels": ckpt.labels,
            "vocabulary_size": len(ckpt.itos), "encoder": cfg.encoder, "pooling": cfg.pooling,
            "max_tokens": ckpt.max_tokens, "truncation": ckpt.truncation}


def file_key(path: Path) -> tuple | None:
    """What changes when the file is replaced or rewritten (ctime cannot be set back), or None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class ModelWatch:
    """The loaded model against the file on disk now, for /ready: a `dvc repro` that replaced the file since
    the server loaded it shows as status "stale", the two md5s, and what to do (restart). The file is
    hashed again only when its stat (device, inode, size, mtime, ctime) changed."""

    def __init__(self, path: Path, ckpt: Checkpoint, md5: str, key: tuple | None):
        self.path, self.loaded_md5 = Path(path), md5
        self.seen: tuple[tuple | None, str | None] = (key, md5)
        self.static = model_identity(path, ckpt, md5)
        self.lock = asyncio.Lock()

    def _look(self) -> tuple[str | None, dict | None]:
        key = file_key(self.path)
        if key is None:
            md5 = None
        elif key == self.seen[0]:
            md5 = self.seen[1]
        else:
            try:
                md5 = _file_md5(self.path)
            except OSError:
                md5 = None
            if file_key(self.path) == key:  # not changed while hashed
                self.seen = (key, md5)
        return md5, dvc_lock_record(self.path)

    async def identity(self) -> dict:
        async with self.lock:
            md5, record = await asyncio.to_thread(self._look)
        if record is not None:
            record["matches_file"] = record["md5"] == md5
            record["matches_loaded"] = record["md5"] == self.loaded_md5
        answer = {**self.static, "dvc": record,
                  "file": {"exists": md5 is not None, "md5": md5, "matches_loaded": md5 == self.loaded_md5}}
        if md5 == self.loaded_md5:
            return {"status": "ready", "model": answer}
        now = f"md5 {md5} on disk" if md5 else "no file there now"
        return {"status": "stale", "model": answer,
                "action": f"{self.path} changed since the server loaded it (loaded md5 {self.loaded_md5}, {now}): "
                          "the server still answers with the loaded model; restart textclf-serve to serve the file"}
