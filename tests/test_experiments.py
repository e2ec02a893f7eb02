"""Experiments a DVC user can trust (issue 17): live training metrics, the run cache, the README's way
back, shared experiments. Real `dvc` in throw-away git repositories of this pipeline on tiny data."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.helpers import VENV_BIN, run, set_param, stages_run

pytestmark = pytest.mark.slow


def rows(path) -> int:
    """Data rows of a DVCLive .tsv (0 when it does not exist yet)."""
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def test_training_metrics_grow_a_row_per_epoch_while_the_stage_runs(repo):
    """DVCLive writes into the declared folder as training goes; best.json (the finished run's marker)
    appears only at the end, after the model."""
    set_param(repo, "train", "epochs", 6)
    set_param(repo, "train", "patience", 6)
    accuracy = repo / "metrics" / "train" / "plots" / "metrics" / "val" / "accuracy.tsv"
    best = repo / "metrics" / "train" / "best.json"
    proc = subprocess.Popen([str(VENV_BIN / "python"), "-m", "pipeline.stages.train"], cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        count = rows(accuracy)
        if not seen or count != seen[-1][0]:
            seen.append((count, best.exists()))
        time.sleep(0.01)
    out = proc.communicate()[0]
    assert proc.returncode == 0, out
    assert seen[0] == (2, True), seen  # the previous run's two epochs, finished
    started = next(i for i, (count, _) in enumerate(seen) if count == 0)  # the new run cleared them
    during = seen[started:]
    assert rows(accuracy) == 6
    assert len([count for count, _ in during if 0 < count < 6]) >= 3, seen  # rows came one epoch at a time
    assert not any(finished for count, finished in during if count < 6), seen  # no marker mid-run
    assert best.exists()


def test_going_back_to_tried_params_restores_every_stage_from_the_run_cache(repo):
    """After `dvc exp run -S train.lr=X`, running with the committed value again trains nothing."""
    committed = 0.002
    out = run(["dvc", "exp", "run", "-S", "train.lr=0.003"], repo).stdout
    assert "train" in stages_run(out), out
    out = run(["dvc", "exp", "run", "-S", f"train.lr={committed}"], repo).stdout
    assert not stages_run(out), out  # nothing ran: each stage was unchanged or restored from the run cache
    assert "Running stage 'train'" not in out
    run(["git", "checkout", "--", "params.yaml"], repo)
    set_param(repo, "train", "lr", 0.003)
    out = run(["dvc", "repro"], repo).stdout
    assert not stages_run(out) and "Stage 'train' is cached - skipping run" in out, out
