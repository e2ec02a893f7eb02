"""The user-facing error type, and the wrapper every entry point runs its main() in: a PipelineError
becomes one line on stderr and exit status 1, never a traceback."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable


class PipelineError(Exception):
    """An error caused by the user's input (data, params, paths), reported without a traceback."""


def short(value, limit: int = 60) -> str:
    """A value as an error message may quote it: a repr bounded in depth, items and length (a YAML alias
    bomb expands to millions of items; its message must not)."""
    import reprlib

    bounded = reprlib.Repr()  # Python 3.11 takes no keyword arguments
    bounded.maxlevel, bounded.maxlist, bounded.maxdict = 3, 4, 4
    bounded.maxstring = bounded.maxother = limit
    text = bounded.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def command_name(module: str, script: str) -> str:
    """What a usage line should call the command: the console script when run through it, else
    `python -m <module>` (argparse would say `predict.py` or `__main__.py`, which nobody can type)."""
    return script if Path(sys.argv[0]).name == script else f"python -m {module}"


def run_main(main: Callable[[], None]) -> None:
    """Run an entry point's main(): a PipelineError, or an OSError such as a full disk, becomes one line
    on stderr and exit status 1; Ctrl-C, SIGTERM (what `timeout`, schedulers and container stops send)
    and the death of the `dvc` that started the stage all unwind the same way, so every atomic output
    removes its partial files on the way out (exit status 130, or 143 for SIGTERM)."""
    signal.signal(signal.SIGTERM, _terminated)
    if "DVC_STAGE" in os.environ:  # run by dvc: end with it
        _watch_dvc()
    try:
        main()
        if _signals_received:  # raised where Python swallows exceptions (a __del__ run by the GC): still a stop
            raise _Terminated()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except _Terminated:
        print("terminated", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as err:  # no space left, a file-size limit, a read-only folder: name the file
        where = err.filename or "output"
        print(f"error: {where}: {err.strerror or err}", file=sys.stderr)
        sys.exit(1)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so the same clean-ups run."""


_signals_received: list[int] = []


def _terminated(signum, frame) -> None:
    _signals_received.append(signum)
    raise _Terminated()


def _watch_dvc(interval: float = 0.5) -> None:
    """Send this process SIGTERM when the `dvc` process it runs under goes away (killed, say): a stage
    must not outlive it and then replace outputs that no dvc.lock records. (Under dash, DVC's shell
    forks the stage, so the stage's parent is the shell, which outlives dvc: hence the watch.)"""
    import threading

    import psutil

    try:
        dvc = next((p for p in psutil.Process().parents() if _is_dvc(p.cmdline())), None)
    except psutil.Error:
        return
    if dvc is None:
        return

    def watch() -> None:
        while True:
            time.sleep(interval)
            try:
                alive = dvc.is_running() and dvc.status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                alive = False
            if not alive:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="watch-dvc", daemon=True).start()


def _is_dvc(argv: list[str]) -> bool:
    """`dvc ...`, `python .../bin/dvc ...` (how its console script shows) or `python -m dvc ...`."""
    return any(Path(arg).name == "dvc" for arg in argv[:2]) or argv[1:3] == ["-m", "dvc"]
