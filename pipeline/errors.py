"""The user-facing error type, and the wrapper every entry point runs its main() in: a PipelineError
becomes one line on stderr and exit status 1, never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable


class PipelineError(Exception):
    """An error caused by the user's input (data, params, paths), reported without a traceback."""


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

