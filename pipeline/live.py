"""Training metrics through DVCLive (per-epoch and per-step series) and the static curves image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.files import pyplot, save_png
from pipeline.training import TrainResult


class LiveLogger:
    """DVCLive, each series on its own axis.

    Per-step series (train/step_loss: the mean loss since the previous point, and lr) have the
    optimizer step as their `step`, a point every `every` steps, or once per epoch when `every` is 0;
    per-epoch series (loss and accuracy of both splits, timings) have the epoch number.
    """

    def __init__(self, live, every: int, lr: float):
        self.live, self.every = live, every
        self.window: list[float] = []
        self.last_lr = lr
        self.events: list[tuple[str, int, dict]] = []  # what was logged, to replay after a resume
        self.quiet = False

    def replay(self, events: list[tuple[str, int, dict]]) -> None:
        """Log again what an interrupted run had logged (its DVCLive folder was staged, and is gone)."""
        self.quiet = True
        for kind, step, row in events:
            getattr(self, kind)(step, row)
        self.quiet = False

    def _log_step_metrics(self, step: int) -> None:
        self.live.step = step
        self.live.log_metric("train/step_loss", sum(self.window) / len(self.window))
        self.live.log_metric("lr", self.last_lr)
        self.window.clear()

    def step(self, step: int, row: dict) -> None:
        self.events.append(("step", step, row))
        self.window.append(row["loss"])
        self.last_lr = row["lr"]
        if self.every and step % self.every == 0:
            self._log_step_metrics(step)

    def epoch(self, step: int, row: dict) -> None:
        self.events.append(("epoch", step, row))
        if not self.every and self.window:
            self._log_step_metrics(step)
        live = self.live
        live.step = row["epoch"]
        for split in ("train", "val"):
            live.log_metric(f"{split}/loss", row[f"{split}_loss"])
            live.log_metric(f"{split}/accuracy", row[f"{split}_accuracy"])
        live.log_metric("epoch_seconds", row["epoch_seconds"])
        live.log_metric("train_tokens_per_second", row["train_tokens_per_second"])
        live.make_summary()
        if self.quiet:
            return
        print(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
              f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} | lr {row['lr']:.2g} | "
              f"{row['epoch_seconds']:.1f}s, {row['train_tokens_per_second']:,.0f} tokens/s", flush=True)


def plot_curves(result: TrainResult, path: Path, smooth: int = 20) -> None:
    """Loss and accuracy per epoch, with the saved (best) epoch marked, and the training loss per
    optimizer step (running mean)."""
    from matplotlib.ticker import MaxNLocator

    history = result.history
    epochs = [h["epoch"] for h in history]
    fig, axes = pyplot().subplots(1, 3, figsize=(13, 3.4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [h[f"train_{metric}"] for h in history], marker="o", label="train")
        ax.plot(epochs, [h[f"val_{metric}"] for h in history], marker="o", label="validation")
        if result.best_epoch:  # the weights in model.pt are this epoch's, not the last one's
            ax.axvline(result.best_epoch, color="grey", linestyle="--", linewidth=1,
                       label=f"saved (epoch {result.best_epoch})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # 2 epochs: ticks 1 and 2, never 1.5
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    losses = np.asarray(result.step_losses)
    if len(losses):
        window = max(1, min(smooth, len(losses)))
        running = np.convolve(losses, np.ones(window) / window, mode="valid")
        axes[2].plot(np.arange(window, len(losses) + 1), running)
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_xlabel("optimizer step")
    axes[2].set_title(f"training loss per step (running mean of {min(smooth, max(1, len(losses)))})")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)
