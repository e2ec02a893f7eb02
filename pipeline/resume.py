"""The resume store: an interrupted training goes on from its last finished epoch.

After each epoch the train stage saves a TrainState (with what DVCLive had logged) under a key: the
params, the thread count (float sums depend on it), and the bytes of the inputs and of the code the
stage reaches (imports.closure). A state is used only by a run with the same key; the file is removed
when training ends.

The file is a torch archive of plain data only (tensors, dicts, lists, numbers, strings), read back with
`weights_only=True`: it sits in a folder a colleague or a copied checkout may have filled, so reading it must
never run code. A file holding anything else (a pickled object, an older format) is ignored with a warning.
"""

from __future__ import annotations

import hashlib
import io
import json
import dataclasses
import sys
from pathlib import Path

import torch

from pipeline.files import atomic_path
from pipeline.imports import ROOT, closure
from pipeline.training import TrainResult, TrainState


def run_key(settings: list, inputs: list[Path], module: str = "pipeline.stages.train") -> str:
    """What identifies a training run: `settings` (JSON-able: params, threads), the bytes of its inputs
    and of the code `module` reaches."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    named = [(str(path), Path(path)) for path in inputs] + [(name, ROOT / name) for name in closure(module)]
    for name, path in named:
        digest.update(name.encode())
        if path.is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


FORMAT = 2  # 1 pickled the dataclasses themselves, which only an unsafe load could read


def _fields(obj) -> dict:
    """A dataclass's fields as a plain dict (shallow: the tensors are not copied)."""
    return {field.name: getattr(obj, field.name) for field in dataclasses.fields(obj)}


def save(path: Path, key: str, state: TrainState, live_events: list) -> None:
    plain = _fields(state) | {"result": _fields(state.result)}
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "key": key, "state": plain, "live_events": live_events}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load(path: Path, key: str) -> tuple[TrainState, list] | None:
    """The state and DVCLive events an interrupted run with this key left, or None (none, another
    run's, or unreadable)."""
    if not path.is_file():
        return None
    try:
        # weights_only: plain data only; a pickled object in the file is refused here, before anything runs
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != FORMAT or saved.get("key") != key:
            return None
        plain = dict(saved["state"])
        state = TrainState(**plain | {"result": TrainResult(**plain["result"])})
        if not isinstance(saved["live_events"], list):
            raise TypeError("live_events is not a list")
    except Exception as err:  # a damaged or foreign file costs the epochs it held, nothing more
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"warning: {path}: cannot read the resume state ({reason}); training from the start", file=sys.stderr)
        return None
    return state, saved["live_events"]
