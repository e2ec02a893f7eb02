"""How many cores a stage may use: the machine's, shared among the DVC queue workers running on it."""

from __future__ import annotations

import os
from pathlib import Path


def queue_workers(proc: Path = Path("/proc")) -> int:
    """How many DVC experiment-queue workers (`dvc exp queue-worker`) run on this machine."""
    count = 0
    for entry in proc.glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        count += any(a == b"exp" and b == b"queue-worker" for a, b in zip(argv, argv[1:]))
    return count


def resolve_threads(setting: str | int, cores: int, workers: int, in_queue: bool) -> int:
    """train.threads: a number as given; auto: the cores shared evenly among the queue's running
    workers (this run counts as one of them when a worker runs it, else as one more). Two trainings on
    two cores with two threads each run several times slower in total than with one each."""
    if setting != "auto":
        return int(setting)
    sharers = max(1, workers if in_queue else workers + 1)
    return max(1, cores // sharers)


def in_queue_run(cwd: Path | None = None) -> bool:
    """Whether this process runs a queued experiment (DVC runs those in a copy under .dvc/tmp/exps)."""
    return f"{os.sep}.dvc{os.sep}tmp{os.sep}exps{os.sep}" in f"{cwd or Path.cwd()}{os.sep}"


def cpu_share(setting: str | int, cores: int | None = None) -> int:
    """How many cores a stage may use (train.threads, prepare.workers): a number as given; auto: this
    machine's cores (or `cores`) shared evenly among the DVC queue workers running on it."""
    if cores is None:
        cores = len(os.sched_getaffinity(0))
    return resolve_threads(setting, cores, queue_workers() if setting == "auto" else 0, in_queue_run())
