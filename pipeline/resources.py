"""How many cores a stage may use: the machine's, shared among this repository's DVC queue workers.

Only the workers of this repository count (a worker runs in the repository, or one of its
.dvc/tmp/exps copies, or carries the repository's queue node name), and only the user's own: another
project's queue, or another user's job, never changes how many threads a run gets, so never its result.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_EXPS = f"{os.sep}.dvc{os.sep}tmp{os.sep}exps{os.sep}"


def is_queue_worker(argv: list[str]) -> bool:
    """Whether a command line is a DVC experiment-queue worker's (`dvc exp queue-worker <node>`)."""
    return any(a == "exp" and b == "queue-worker" for a, b in zip(argv, argv[1:]))


def repo_root(cwd: Path | None = None) -> Path:
    """The repository a stage runs for: `cwd`, else DVC_ROOT (dvc sets it for a stage's command), else
    the working folder; above its .dvc/tmp/exps copy in a queued run, else the nearest folder holding .dvc."""
    start = Path(cwd or os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    text = f"{start}{os.sep}"
    if _EXPS in text:
        return Path(text[:text.index(_EXPS)])
    return next((d for d in (start, *start.parents) if (d / ".dvc").is_dir()), start)


def _node_prefix(root: Path) -> str:
    """The start of the node names DVC gives this repository's workers (`dvc-exp-<hash>-<n>@localhost`,
    the hash taken from the queue's folder), whatever folder a worker was started from."""
    wdir = os.path.join(str(root), ".dvc", "tmp", "exps", "celery")
    return f"dvc-exp-{hashlib.sha256(wdir.encode('utf-8')).hexdigest()[:6]}-"


def _inside(path: str, root: Path) -> bool:
    p = Path(path)
    return p == root or root in p.parents


def queue_workers(root: Path | None = None) -> int:
    """How many DVC experiment-queue workers (`dvc exp queue-worker`) of this user run for the
    repository at `root` (repo_root() by default)."""
    import psutil

    root = repo_root() if root is None else Path(root).resolve()
    prefix = _node_prefix(root)
    me = os.getuid()
    count = 0
    for proc in psutil.process_iter(["uids", "cmdline"]):
        uids, argv = proc.info["uids"], proc.info["cmdline"]
        if uids is None or uids.real != me or not argv or not is_queue_worker(argv):
            continue  # another user's, gone, or not a worker
        if any(a.startswith(prefix) for a in argv):  # the node name DVC gave it names this repository
            count += 1
            continue
        try:  # else where it runs (the repository reached through a link; a worker started by hand)
            cwd = proc.cwd()
        except (psutil.Error, OSError):
            continue
        count += _inside(cwd, root)
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
    return _EXPS in f"{cwd or Path.cwd()}{os.sep}"


def cpu_share(setting: str | int, cores: int | None = None) -> int:
    """How many cores a stage may use (train.threads, prepare.workers): a number as given; auto: this
    machine's cores (or `cores`) shared evenly among this repository's DVC queue workers."""
    if cores is None:
        cores = len(os.sched_getaffinity(0))
    return resolve_threads(setting, cores, queue_workers() if setting == "auto" else 0, in_queue_run())
