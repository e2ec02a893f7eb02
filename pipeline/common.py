"""Helpers every stage shares: a user-facing error type, atomic writes, and a main() wrapper."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterator


class PipelineError(Exception):
    """An error caused by the user's input (data, params, paths), reported without a traceback."""


# What reading a truncated or corrupt file (compressed, archived or plain) raises, in any reader.
READ_ERRORS = (EOFError, OSError, zlib.error, zipfile.BadZipFile, tarfile.TarError)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; move it onto `target` only if the block succeeds.

    Works for files and directories alike. The temporary name starts with a dot and ends in
    `.partial`, so a crash never leaves something that DVC or a rerun could take for the real output.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target.parent, f".{target.name}.*.partial")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    # mkdtemp made a directory; callers writing a single file get a path inside nothing yet.
    tmp.rmdir()
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def check_output_file(path: str | os.PathLike, *protected: str | os.PathLike) -> Path:
    """`path` as a Path, if a command may write a file there; else a PipelineError naming it and why.

    atomic_path replaces a directory at its target (what stages want for their output folders), so a
    command writing one file must refuse a directory there before it starts, and a target that is (or
    resolves to, through links or `..`) one of its own inputs, `protected`."""
    path = Path(path)
    if path.is_dir():
        raise PipelineError(f"{path}: is a directory, and writing the output there would delete it; "
                            "name a file to write")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise PipelineError(f"{path}: cannot write there: {parent} is a file, not a folder")
    target = path.resolve()
    for source in protected:
        if source is not None and Path(source).resolve() == target:
            raise PipelineError(f"{path}: the output would replace the input {source}; name another file")
    return path


def remove_stale(directory: Path, pattern: str) -> None:
    """Delete what a killed run left behind (its temporary files or folders matching `pattern`).

    Only ever called for the one output a stage is about to write, so nothing live matches."""
    for leftover in directory.glob(pattern):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def pyplot():
    """matplotlib's pyplot on the headless Agg backend (stages run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | os.PathLike) -> None:
    """Write a matplotlib figure as PNG, atomically, and free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    pyplot().close(fig)


def json_object_line(line: str, path: str | os.PathLike, lineno: int) -> dict:
    """One line of a JSON-lines file as an object; an error naming the file, line and column otherwise."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise PipelineError(f"{path}: line {lineno}, column {err.colno}: invalid JSON: {err.msg}") from None
    if not isinstance(row, dict):
        raise PipelineError(f"{path}: line {lineno}: expected a JSON object, got {type(row).__name__}")
    return row


def read_json(path: str | os.PathLike):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found (did the stage that writes it run?)") from None
    except json.JSONDecodeError as err:
        raise PipelineError(f"{path}: line {err.lineno}, column {err.colno}: invalid JSON: {err.msg}") from None


def command_name(module: str, script: str) -> str:
    """What a usage line should call the command: the console script when run through it, else
    `python -m <module>` (argparse would say `predict.py` or `__main__.py`, which nobody can type)."""
    return script if Path(sys.argv[0]).name == script else f"python -m {module}"


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's main(); turn PipelineError into one clear line on stderr and exit status 1."""
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


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
