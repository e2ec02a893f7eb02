"""How many cores a stage may use (pipeline.resources): shared among the DVC queue workers running."""

from __future__ import annotations

from pipeline import resources
from pipeline.resources import cpu_share, in_queue_run, is_queue_worker, resolve_threads


def test_threads_auto_shares_the_cores_among_queue_workers():
    assert resolve_threads("auto", cores=2, workers=0, in_queue=False) == 2   # `dvc repro` alone
    assert resolve_threads("auto", cores=2, workers=1, in_queue=True) == 2    # `dvc queue start -j 1`
    assert resolve_threads("auto", cores=2, workers=2, in_queue=True) == 1    # `-j 2`: one core each
    assert resolve_threads("auto", cores=16, workers=3, in_queue=True) == 5
    assert resolve_threads("auto", cores=2, workers=1, in_queue=False) == 1   # a repro beside a queue run
    assert resolve_threads("auto", cores=1, workers=4, in_queue=True) == 1
    assert resolve_threads(3, cores=2, workers=2, in_queue=True) == 3


def test_a_queue_worker_is_known_by_its_command_line():
    """Which repository's workers count is tested with real processes in test_bad_inputs_data.py."""
    assert is_queue_worker(["/v/bin/python", "/v/bin/dvc", "exp", "queue-worker", "dvc-exp-1@localhost"])
    assert is_queue_worker(["dvc", "exp", "queue-worker", "dvc-exp-2@localhost", "--clean"])
    assert not is_queue_worker(["sh", "-c", "dvc exp queue-worker x"])  # one string: a shell, not a worker
    assert not is_queue_worker(["python", "-m", "pipeline.stages.train"])
    assert not is_queue_worker([])


def test_a_queued_run_is_known_by_its_folder(tmp_path, monkeypatch):
    assert in_queue_run(tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "run" / "abc123")
    assert not in_queue_run(tmp_path / "repo")
    assert not in_queue_run(tmp_path / "repo" / ".dvc" / "tmp")
    # cpu_share: the machine's workers counted, this run one more of them outside the queue, one of them inside.
    monkeypatch.setattr(resources, "queue_workers", lambda root=None: 1)
    monkeypatch.chdir(tmp_path)
    assert cpu_share("auto", cores=4) == 2
    queued = tmp_path / ".dvc" / "tmp" / "exps" / "run" / "abc"
    queued.mkdir(parents=True)
    monkeypatch.chdir(queued)
    assert cpu_share("auto", cores=4) == 4
    assert cpu_share(3, cores=1) == 3
