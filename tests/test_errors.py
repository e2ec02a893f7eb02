"""The entry points' wrapper (pipeline.errors.run_main): a user's error is one line and exit status 1,
never a traceback; Ctrl-C is exit status 130."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

PROGRAM = """
import sys
from pipeline.errors import PipelineError, run_main

def main():
    if sys.argv[1] == "error":
        raise PipelineError("data/c.csv: line 3: something is wrong")
    if sys.argv[1] == "interrupt":
        raise KeyboardInterrupt
    print("done")

run_main(main)
"""


@pytest.mark.parametrize("how, status, stderr, stdout", [
    ("error", 1, "error: data/c.csv: line 3: something is wrong\n", ""),
    ("interrupt", 130, "interrupted\n", ""),
    ("fine", 0, "", "done\n"),
], ids=["error", "interrupt", "fine"])
def test_run_main_turns_errors_into_one_line_and_a_status(how, status, stderr, stdout):
    proc = subprocess.run([sys.executable, "-c", PROGRAM, how], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr, proc.stdout) == (status, stderr, stdout)
