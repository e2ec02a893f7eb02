"""The entry points' wrapper (pipeline.errors.run_main): a user's error is one line and exit status 1,
never a traceback; Ctrl-C is exit status 130."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

PROGRAM = """
import os
import signal
import sys
from pipeline.errors import PipelineError, run_main

class SentSigtermWhenCollected:
    def __del__(self):  # the signal lands inside a finalizer, where Python prints and drops exceptions
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(1000))

def main():
    if sys.argv[1] == "sigterm-in-finalizer":
        SentSigtermWhenCollected()
        print("went on")
        return
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


def test_a_sigterm_swallowed_inside_a_finalizer_still_ends_the_stage_as_terminated():
    """A SIGTERM whose exception Python drops (raised in a __del__ the garbage collector runs) must not let
    the stage exit 0 as if it had not been told to stop: DVC would record its outputs."""
    proc = subprocess.run([sys.executable, "-c", PROGRAM, "sigterm-in-finalizer"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.endswith("terminated\n"), proc.stderr
