"""Training metrics through DVCLive (pipeline.live): step series on optimizer steps, epoch series on
epochs, a resumed run's log replayed, and the static curves image."""

from __future__ import annotations

import pytest
from dvclive import Live

from pipeline.live import LiveLogger, plot_curves
from pipeline.training import TrainResult


@pytest.mark.parametrize("every, step_points", [(2, [2, 4, 6, 8]), (0, [5, 9])])
def test_live_logger_puts_step_series_on_steps_and_epoch_series_on_epochs(tmp_path, every, step_points):
    """Real DVCLive files: step loss every `every` steps (0: once per epoch); epoch rows over epochs."""
    epoch_row = {"train_loss": 0.5, "train_accuracy": 0.7, "val_loss": 0.6, "val_accuracy": 0.65,
                 "lr": 0.1, "epoch_seconds": 1.0, "train_tokens_per_second": 10.0}
    with Live(dir=str(tmp_path / "live"), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        logger = LiveLogger(live, every, lr=0.1)
        for step in range(1, 10):  # two epochs: steps 1-5 and 6-9
            logger.step(step, {"loss": float(step), "lr": 0.1 / step})
            if step in (5, 9):
                logger.epoch(step, {**epoch_row, "epoch": 1 if step == 5 else 2})

    def column(name):
        rows = [r.split("\t") for r in (tmp_path / "live/plots/metrics" / name).read_text().splitlines()[1:]]
        return [int(r[0]) for r in rows], [float(r[1]) for r in rows]

    steps, losses = column("train/step_loss.tsv")
    assert steps == step_points
    if every == 2:
        assert losses == [1.5, 3.5, 5.5, 7.5]  # the mean over each window
    else:
        assert losses == [3.0, 7.5]
    assert column("val/accuracy.tsv")[0] == [1, 2]
    assert column("train/loss.tsv")[0] == [1, 2]
    assert column("lr.tsv")[1][-1] == pytest.approx(0.1 / step_points[-1])


def _epoch_row(epoch: int) -> dict:
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "train_accuracy": 0.5 + epoch / 10, "val_loss": 1.2 / epoch,
            "val_accuracy": 0.45 + epoch / 10, "lr": 0.1, "epoch_seconds": 1.0, "train_tokens_per_second": 10.0}


def test_a_replayed_log_writes_what_the_uninterrupted_run_wrote(tmp_path, capsys):
    """A resumed run's DVCLive folder is new: the interrupted run's events, replayed, then its own
    epochs, give the same series files as one run that was never interrupted."""
    def run(folder, events=None, epochs=range(1, 5)):
        with Live(dir=str(tmp_path / folder), dvcyaml=None, save_dvc_exp=False, report=None) as live:
            logger = LiveLogger(live, 2, lr=0.1)
            if events:
                logger.replay(events)
            for epoch in epochs:
                for step in range(3 * epoch - 2, 3 * epoch + 1):
                    logger.step(step, {"loss": float(step), "lr": 0.1})
                logger.epoch(3 * epoch, _epoch_row(epoch))
            return logger.events

    run("whole")
    capsys.readouterr()
    first_half = run("first", epochs=range(1, 3))
    capsys.readouterr()
    run("resumed", events=first_half, epochs=range(3, 5))
    printed = capsys.readouterr().out
    assert "epoch 3:" in printed and "epoch 1:" not in printed  # the replay is silent
    whole = tmp_path / "whole/plots/metrics"
    files = sorted(p.relative_to(whole) for p in whole.rglob("*.tsv"))
    assert len(files) >= 7
    assert sorted(p.relative_to(tmp_path / "resumed/plots/metrics")
                  for p in (tmp_path / "resumed/plots/metrics").rglob("*.tsv")) == files
    for name in files:
        assert (tmp_path / "resumed/plots/metrics" / name).read_text() == (whole / name).read_text(), name


def test_the_curves_image_marks_the_saved_epoch(tmp_path):
    history = [_epoch_row(epoch) for epoch in (1, 2, 3)]
    plot_curves(TrainResult({}, 2, 0.65, history, [1.0, 0.8, 0.7, 0.5]), tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*.partial"))
