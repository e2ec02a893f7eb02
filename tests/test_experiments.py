"""Experiments a DVC user can trust (issue 17): live training metrics, the run cache, the README's way
back, shared experiments. Real `dvc` in throw-away git repositories of this pipeline on tiny data."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.helpers import VENV_BIN, run, s3_server, set_param, stages_run

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
    # textclf-exp show: the headline metrics and only the params that differ between the experiments.
    shown = subprocess.run([str(VENV_BIN / "python"), "-m", "pipeline.cli.experiments", "show", "--no-pager"],
                           cwd=repo, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120",
                                                                          "PATH": f"{VENV_BIN}:{os.environ['PATH']}"})
    assert shown.returncode == 0, shown.stderr
    header = next(line for line in shown.stdout.splitlines() if "Experiment" in line).split()
    assert header == ["Experiment", "lstm_val_acc", "lstm_test_acc", "shipped_test_acc", "baseline_test_acc",
                      "train.lr"], shown.stdout
    run(["git", "checkout", "--", "params.yaml"], repo)
    set_param(repo, "train", "lr", 0.003)
    out = run(["dvc", "repro"], repo).stdout
    assert not stages_run(out) and "Stage 'train' is cached - skipping run" in out, out


def exp(repo, *args, check=True):
    return run([str(VENV_BIN / "python"), "-m", "pipeline.cli.experiments", *args], repo, check=check)


def test_a_shared_experiment_without_its_model_costs_a_colleague_nothing(repo, tmp_path):
    """The README's old order: an experiment run, then a remote added. Plain `dvc exp push` uploads no
    model; the colleague's `textclf-exp apply` refuses and keeps their model and their remote. Then
    `textclf-exp push` from a remote every commit reaches carries the model, and the apply works."""
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], repo)
    run(["dvc", "exp", "run", "-n", "late", "-S", "train.lr=0.003"], repo)
    theirs = (repo / "models/model.pt").read_bytes()
    run(["git", "checkout", "--", "."], repo)
    run(["dvc", "checkout"], repo)
    refused = exp(repo, "push", "late", check=False)  # no remote yet: refused, where DVC uploads nothing
    assert refused.returncode == 1 and "no DVC remote to take its model" in refused.stdout, refused.stdout
    store = tmp_path / "store"
    run(["dvc", "remote", "add", "-d", "store", str(store)], repo)
    run(["git", "commit", "-qm", "a remote", ".dvc/config"], repo)
    branch = run(["git", "branch", "--show-current"], repo).stdout.strip()
    run(["git", "push", "-q", "origin", branch], repo)
    run(["dvc", "push"], repo)
    run(["dvc", "exp", "push", "origin", "late"], repo)  # DVC: "Pushed experiment", and no model

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", "-b", branch, str(origin), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    model, config = (clone / "models/model.pt").read_bytes(), (clone / ".dvc/config").read_text()
    proc = exp(clone, "apply", "late", check=False)
    assert proc.returncode == 1 and "its outputs are in no DVC cache or remote" in proc.stdout, proc.stdout
    assert (clone / "models/model.pt").read_bytes() == model and (clone / ".dvc/config").read_text() == config
    assert "up to date" in run(["dvc", "status"], clone).stdout

    assert "pushed experiment 'late'" in exp(repo, "push", "late").stdout  # the model goes now
    out = exp(clone, "apply", "late").stdout
    assert "applied experiment 'late'" in out and "kept your .dvc/config" in out, out
    assert (clone / "models/model.pt").read_bytes() == theirs
    assert (clone / ".dvc/config").read_text() == config  # the remote is still there
    assert not (clone / ".dvc/config.local").exists() and not (repo / ".dvc/config.local").exists()


def test_apply_never_loses_uncommitted_changes(repo):
    """`dvc exp apply` over uncommitted changes keeps them only in a DVC-internal ref (cleared by its next
    apply). textclf-exp apply refuses, naming them, and changes nothing; --force first saves them in a
    git stash (a changed model through `dvc commit`, so the stash's dvc.lock finds it in the cache).
    Right after `dvc exp run` the workspace's changes are that experiment's: nothing to lose, no refusal."""
    run(["dvc", "exp", "run", "-n", "other", "-S", "train.lr=0.003"], repo)
    theirs = (repo / "models/model.pt").read_bytes()
    assert "applied experiment 'other'" in exp(repo, "apply", "other", "--git-remote", "").stdout
    assert run(["git", "stash", "list"], repo).stdout == ""
    run(["git", "checkout", "--", "."], repo)
    run(["dvc", "checkout"], repo)

    with (repo / "params.yaml").open("a") as f:
        f.write("# my note\n")
    with (repo / "models/model.pt").open("ab") as f:
        f.write(b"my edit")
    mine = (repo / "models/model.pt").read_bytes()
    proc = exp(repo, "apply", "other", "--git-remote", "", check=False)
    assert proc.returncode == 1, proc.stdout
    assert proc.stdout.strip().splitlines() == [
        "error: experiment 'other': applying it would overwrite your uncommitted changes to params.yaml, "
        "models/model.pt; nothing was changed. Commit them, or run again with --force to save them in a git "
        "stash first"], proc.stdout
    assert (repo / "params.yaml").read_text().endswith("# my note\n") and (repo / "models/model.pt").read_bytes() == mine

    out = exp(repo, "apply", "other", "--git-remote", "", "--force").stdout
    assert "saved your changes as the git stash" in out and "applied experiment 'other'" in out, out
    assert (repo / "models/model.pt").read_bytes() == theirs
    assert "textclf-exp apply other: your uncommitted changes" in run(["git", "stash", "list"], repo).stdout
    assert run(["git", "show", "stash@{0}:params.yaml"], repo).stdout.endswith("# my note\n")
    import yaml
    lock = yaml.safe_load(run(["git", "show", "stash@{0}:dvc.lock"], repo).stdout)
    digest = next(o["md5"] for o in lock["stages"]["ship"]["outs"] if o["path"] == "models/model.pt")
    assert (repo / ".dvc/cache/files/md5" / digest[:2] / digest[2:]).read_bytes() == mine


def test_a_failed_upload_publishes_no_experiment(repo, tmp_path, monkeypatch):
    """The data goes first, the git ref only when every output arrived: a remote that is full (a 64 KiB
    tmpfs, where one can be mounted) or an S3 bucket that does not exist (moto on 127.0.0.1) is one line
    naming the remote and the cause, and origin gets no experiment; once the remote works, it does."""
    import boto3

    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], repo)
    run(["git", "push", "-q", "origin", "main"], repo)
    run(["dvc", "exp", "run", "-n", "shared", "-S", "train.lr=0.003"], repo)

    def published() -> str:
        return run(["git", "ls-remote", str(origin), "refs/exps/*"], repo).stdout

    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], capture_output=True).returncode == 0:
        try:
            run(["dvc", "remote", "add", "full", str(full / "store")], repo)
            proc = exp(repo, "push", "shared", "--dvc-remote", "full", check=False)
            assert proc.returncode == 1, proc.stdout
            assert proc.stdout.startswith("error: experiment 'shared': its outputs did not all reach the DVC remote "
                                          "'full' (No space left on device"), proc.stdout
            assert "its git ref was not pushed" in proc.stdout and published() == ""
        finally:
            subprocess.run(["umount", str(full)])
    else:  # not root, or no tmpfs here: the S3 half below still runs
        print("skipped the full-disk half: cannot mount a tmpfs here")

    with s3_server(monkeypatch) as endpoint:
        run(["dvc", "remote", "add", "-d", "s3store", "s3://no-such-bucket/dvc"], repo)
        run(["dvc", "remote", "modify", "s3store", "endpointurl", endpoint], repo)
        proc = exp(repo, "push", "shared", check=False)
        assert proc.returncode == 1, proc.stdout
        assert proc.stdout.startswith("error: experiment 'shared': its outputs did not all reach the DVC remote "
                                      "'s3store' (NoSuchBucket"), proc.stdout
        assert published() == ""
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="no-such-bucket")
        assert "pushed experiment 'shared'" in exp(repo, "push", "shared").stdout
        assert "refs/exps/" in published()
        listed = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="no-such-bucket")
        assert listed["KeyCount"] > 0


@pytest.mark.parametrize("args, named", [
    (["apply", "--", "-A"], "experiment '-A'"),                          # `dvc exp pull origin -A`: every experiment
    (["apply", "--git-remote=--run-cache", "x"], "--git-remote '--run-cache'"),
    (["apply", "--git-remote=-h", "x"], "--git-remote '-h'"),
    (["push", "--", "--rev=HEAD"], "experiment '--rev=HEAD'"),
    (["push", "x", "--git-remote=-f"], "--git-remote '-f'"),             # `dvc exp push -f`: a forced push
    (["push", "x", "--dvc-remote=-r"], "--dvc-remote '-r'"),
    (["apply", "x\n", "--git-remote="], "experiment 'x\\n'"),
])
def test_a_name_that_is_an_option_never_reaches_dvc(tmp_path, args, named):
    """An experiment NAME or a remote starting with '-' would be an option to `dvc exp push/pull/apply`
    (`-A`, `-f`, `--rev=...`): refused before anything runs; the commands also pass `--` before names."""
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    proc = exp(tmp_path, *args, check=False)
    assert proc.returncode == 1, proc.stdout
    assert proc.stdout.strip().splitlines() == [
        f"error: {named}: not a name (it must not be empty, start with '-', or hold blanks at its ends or "
        "control characters); nothing was run"], proc.stdout
