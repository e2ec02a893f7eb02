"""How many cores a stage may use (pipeline.resources): shared among the DVC queue workers running."""

from __future__ import annotations

from pipeline import resources
from pipeline.resources import cpu_share, in_queue_run, queue_workers, resolve_threads


def test_threads_auto_shares_the_cores_among_queue_workers():
    assert resolve_threads("auto", cores=2, workers=0, in_queue=False) == 2   # `dvc repro` alone
    assert resolve_threads("auto", cores=2, workers=1, in_queue=True) == 2    # `dvc queue start -j 1`
    assert resolve_threads("auto", cores=2, workers=2, in_queue=True) == 1    # `-j 2`: one core each
    assert resolve_threads("auto", cores=16, workers=3, in_queue=True) == 5
    assert resolve_threads("auto", cores=2, workers=1, in_queue=False) == 1   # a repro beside a queue run
    assert resolve_threads("auto", cores=1, workers=4, in_queue=True) == 1
    assert resolve_threads(3, cores=2, workers=2, in_queue=True) == 3


def test_queue_workers_are_counted_from_their_command_lines(tmp_path):
    for pid, argv in {"11": [b"/v/bin/python", b"/v/bin/dvc", b"exp", b"queue-worker", b"dvc-exp-1@localhost"],
                      "12": [b"dvc", b"exp", b"queue-worker", b"dvc-exp-2@localhost", b"--clean"],
                      "13": [b"sh", b"-c", b"dvc exp queue-worker x"],  # one string: a shell, not a worker
                      "14": [b"python", b"-m", b"pipeline.train"]}.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(b"\0".join(argv) + b"\0")
    (tmp_path / "self").mkdir()
    assert queue_workers(tmp_path) == 2


def test_a_queued_run_is_known_by_its_folder(tmp_path, monkeypatch):
    assert in_queue_run(tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "run" / "abc123")
    assert not in_queue_run(tmp_path / "repo")
    assert not in_queue_run(tmp_path / "repo" / ".dvc" / "tmp")
    # cpu_share: the machine's workers counted, this run one more of them outside the queue, one of them inside.
    monkeypatch.setattr(resources, "queue_workers", lambda: 1)
    monkeypatch.chdir(tmp_path)
    assert cpu_share("auto", cores=4) == 2
    queued = tmp_path / ".dvc" / "tmp" / "exps" / "run" / "abc"
    queued.mkdir(parents=True)
    monkeypatch.chdir(queued)
    assert cpu_share("auto", cores=4) == 4
    assert cpu_share(3, cores=1) == 3
