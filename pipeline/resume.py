"""The resume store: an interrupted training goes on from its last finished epoch.

After each epoch the train stage saves a TrainState (with what DVCLive had logged) under a key: the
params, the thread count (float sums depend on it), and the bytes of the inputs and of the code the
stage reaches (imports.closure). A state is used only by a run with the same key; the file is removed
when training ends.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import torch

from pipeline.files import atomic_path
from pipeline.imports import ROOT, closure
from pipeline.training import TrainState


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


def save(path: Path, key: str, state: TrainState, live_events: list) -> None:
    buffer = io.BytesIO()
    torch.save({"key": key, "state": state, "live_events": live_events}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load(path: Path, key: str) -> tuple[TrainState, list] | None:
    """The state and DVCLive events an interrupted run with this key left, or None (none, another
    run's, or unreadable)."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)  # a file this stage wrote
    except Exception as err:  # a damaged file costs the epochs it held, nothing more
        print(f"warning: {path}: cannot read the resume state ({err}); training from the start", file=sys.stderr)
        return None
    if not isinstance(saved, dict) or saved.get("key") != key or not isinstance(saved.get("state"), TrainState):
        return None
    return saved["state"], saved["live_events"]
