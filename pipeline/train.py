"""Stage train: an LSTM classifier on the aligned embedding matrix, early-stopped on validation accuracy.

Writes models/model.pt (the best epoch), metrics/train/best.json (the saved epoch and its validation
accuracy: what `dvc exp show` compares), and DVCLive's folder metrics/train/: per-epoch loss and
accuracy over epochs, step loss and learning rate over optimizer steps, metrics.json (DVCLive's
summary: the last values, timings; a plain output), and curves.png (a static image of the curves).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from pipeline import params as P
from pipeline.common import PipelineError, atomic_path, cpu_share, pyplot, read_json, run_main, save_png, write_json
from pipeline.data import TokenIds, auto_max_tokens, bucket_batches, encode, pad_batch, sequence_lengths
from pipeline.inference import MODEL_PATH, save_checkpoint
from pipeline.model import LSTMClassifier, ModelConfig
from pipeline.text import TextConfig

PREPARED = Path("data/prepared")
VOCAB_DIR = Path("data/vocab")
LIVE_DIR = Path("metrics/train")
# What an interrupted training resumes from: its last finished epoch. Beside the model, not a DVC
# output, git-ignored; removed when training ends.
RESUME_PATH = Path("models/.train-resume.pt")
# The code that shapes a run: a resume state from other code is not used.
TRAIN_CODE = ("pipeline/train.py", "pipeline/model.py", "pipeline/data.py")
BEST = "best.json"  # in LIVE_DIR


def set_determinism(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Denormal floats make the CPU backward pass of long sequences about ten times slower.
    torch.set_flush_denormal(True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("params.yaml: 'train.device' is 'cuda' but no CUDA device is available")
    return torch.device(name)


@dataclass
class EpochResult:
    loss: float
    accuracy: float
    tokens: int
    seconds: float
    examples: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass
class TrainResult:
    best_state: dict
    best_epoch: int
    best_val_accuracy: float
    history: list[dict] = field(default_factory=list)  # one row per epoch
    step_losses: list[float] = field(default_factory=list)  # one per optimizer step
    seconds: float = 0.0


def build_model(tp: P.TrainParams, matrix: np.ndarray, num_classes: int) -> LSTMClassifier:
    cfg = ModelConfig(
        vocab_size=matrix.shape[0], embedding_dim=matrix.shape[1], num_classes=num_classes,
        hidden_size=tp.hidden_size, num_layers=tp.num_layers, bidirectional=tp.bidirectional,
        dropout=tp.dropout, embedding_dropout=tp.embedding_dropout, pooling=tp.pooling,
        embedding_channels=2 if tp.embeddings == "multichannel" else 1,
    )
    pretrained = None if tp.embeddings == "random" else torch.from_numpy(matrix)
    freeze = tp.embeddings in ("frozen", "freeze_then_finetune", "multichannel")
    return LSTMClassifier(cfg, pretrained, freeze_embeddings=freeze)


def run_epoch(model: LSTMClassifier, sequences: list[np.ndarray], labels: np.ndarray, batch_size: int,
              device: torch.device, optimizer: torch.optim.Optimizer | None = None,
              rng: np.random.Generator | None = None, grad_clip: float | None = None,
              word_dropout: float = 0.0, unk_id: int = 1, progress: str | None = None,
              class_weight: torch.Tensor | None = None,
              on_step: Callable[[float], None] | None = None, forward: Callable | None = None,
              shard: tuple[int, int] = (0, 1), noise_rng: np.random.Generator | None = None) -> EpochResult:
    """One pass over the data; trains when an optimizer is given, else only measures.

    While training, `class_weight` weights each class's loss (the reported loss stays unweighted) and
    `on_step` is called after each optimizer step with that batch's mean loss. Data-parallel training
    passes `forward` (the DistributedDataParallel wrapper, which averages gradients across processes),
    `shard` (rank, world size: every process draws the same batches from the same seed and takes every
    world-th one, as many as the others) and `noise_rng` (word dropout, different in each process).
    """
    training = optimizer is not None
    model.train(training)
    forward = forward or model
    noise_rng = noise_rng or rng
    lengths = sequence_lengths(sequences)
    batches = bucket_batches(lengths, batch_size, rng if training else None)
    rank, world = shard
    if training and world > 1:
        batches = batches[rank: len(batches) - len(batches) % world: world]
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    weighted_loss_fn = (nn.CrossEntropyLoss(weight=class_weight.to(device), reduction="sum")
                        if training and class_weight is not None else None)
    total_loss, correct, tokens = 0.0, 0, 0
    start = time.perf_counter()
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    bar = tqdm(batches, desc=progress, leave=False, disable=progress is None or None, unit="batch")
    with torch.set_grad_enabled(training):
        for index in bar:
            ids, lens = pad_batch(sequences, index, model.cfg.pad_id)
            if training and word_dropout:
                # Word dropout: hide random tokens behind <unk> so the model cannot lean on any one word.
                hide = torch.from_numpy(noise_rng.random(ids.shape) < word_dropout) & (ids != model.cfg.pad_id)
                ids = ids.masked_fill(hide, unk_id)
            ids, lens = ids.to(device, non_blocking=True), lens.to(device, non_blocking=True)
            target = torch.from_numpy(labels[index]).to(device)
            with amp:
                logits = forward(ids, lens)
                loss = loss_fn(logits.float(), target)
            if training:
                objective = loss if weighted_loss_fn is None else weighted_loss_fn(logits.float(), target)
                optimizer.zero_grad(set_to_none=True)
                (objective / len(index)).backward()
                if grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
            batch_loss = loss.item()
            if on_step and training:
                on_step(batch_loss / len(index))
            total_loss += batch_loss
            correct += int((logits.argmax(-1) == target).sum())
            tokens += int(lengths[index].sum())
            if training and bar.n % 20 == 0:
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{total_loss / max(1, bar.n * batch_size):.3f}",
                                tok_s=f"{tokens / max(elapsed, 1e-9):,.0f}")
    n = sum(len(index) for index in batches)
    return EpochResult(total_loss / n, correct / n, tokens, time.perf_counter() - start, n)


def combined(result: EpochResult, world: int) -> EpochResult:
    """One process's share of an epoch made whole: loss, accuracy and tokens over all processes."""
    if world == 1:
        return result
    import torch.distributed as dist

    totals = torch.tensor([result.loss * result.examples, result.accuracy * result.examples, result.examples,
                           result.tokens], dtype=torch.float64)
    dist.all_reduce(totals)
    n = totals[2].item()
    return EpochResult(totals[0].item() / n, totals[1].item() / n, int(totals[3].item()), result.seconds, int(n))


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> torch.Tensor | None:
    """Per-class loss weights: None, or 'balanced' (n / (k * count)), so each class weighs the same in total."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = len(labels) / (num_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate before optimizer step `step` (counted from 0)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def stretched_epochs(tp: P.TrainParams, steps_per_epoch: int) -> tuple[int, int]:
    """(epochs, patience): as set, or stretched alike until training takes at least min_steps optimizer
    steps. A corpus of 1,200 long reviews has 37 batches an epoch: 15 epochs are too few updates."""
    epochs = max(tp.epochs, math.ceil(tp.min_steps / steps_per_epoch))
    return epochs, math.ceil(tp.patience * epochs / tp.epochs)


def fit(model: LSTMClassifier, tp: P.TrainParams, train_x: list[np.ndarray], train_y: np.ndarray,
        val_x: list[np.ndarray], val_y: np.ndarray, device: torch.device, unk_id: int = 1,
        on_epoch: Callable[[int, dict], None] | None = None, show_progress: bool = False,
        on_step: Callable[[int, dict], None] | None = None, resume_from: dict | None = None,
        on_checkpoint: Callable[[dict], None] | None = None, shard: tuple[int, int] = (0, 1)) -> TrainResult:
    """Train with early stopping on validation accuracy; returns the best epoch's weights.

    `on_step(step, row)` is called after every optimizer step (row: loss, lr); `on_epoch(step, row)`
    after each epoch, with the number of optimizer steps taken so far. `on_checkpoint(state)` gets,
    after each epoch, everything needed to go on from there (weights, optimizer, random generators,
    early-stopping state); `fit(..., resume_from=state)` goes on from it and ends as the uninterrupted
    run would have, to the bit on the same machine.

    Under torchrun (`shard` = rank, world size, the process group initialised), each process trains on
    its share of every epoch's batches through DistributedDataParallel, which averages the gradients;
    every process then holds the same weights, measures the same validation accuracy and stops at the
    same epoch.
    """
    rank, world = shard
    model.to(device)
    # Frozen embeddings get no gradient, and Adam skips them until they are unfrozen.
    optimizer = torch.optim.Adam(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / tp.batch_size) // world
    epochs, patience = stretched_epochs(tp, steps_per_epoch)
    if tp.embeddings == "freeze_then_finetune" and epochs <= tp.freeze_epochs:
        print(f"warning: train.epochs ({epochs}) <= train.freeze_epochs ({tp.freeze_epochs}): the embeddings "
              "stay frozen for the whole run; lower freeze_epochs to fine-tune them", file=sys.stderr, flush=True)
    total_steps = steps_per_epoch * epochs
    plateau_factor = 1.0  # 'plateau' halves it after each epoch without a better validation accuracy
    step = 0

    def set_lr() -> float:
        lr = tp.lr * plateau_factor * lr_factor(tp.lr_schedule, step, total_steps, tp.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def after_step(loss: float) -> None:
        nonlocal step
        best.step_losses.append(loss)
        if on_step:
            on_step(step + 1, {"loss": loss, "lr": optimizer.param_groups[0]["lr"]})
        step += 1
        set_lr()

    weight = class_weights(train_y, model.cfg.num_classes, tp.class_weights)
    rng = np.random.default_rng(tp.seed)  # batch order: the same in every process
    noise_rng = np.random.default_rng([tp.seed, rank]) if world > 1 else None  # word dropout: each its own
    forward, trainable = None, None
    best = TrainResult(copy.deepcopy(model.state_dict()), 0, -1.0)
    stale = 0
    first_epoch, seconds_before = 1, 0.0
    if resume_from is not None:
        r = resume_from
        model.load_state_dict(r["model"])
        if tp.embeddings in ("freeze_then_finetune", "multichannel"):
            model.set_embeddings_trainable(r["epoch"] > tp.freeze_epochs)  # as the optimizer last saw it
        optimizer.load_state_dict(r["optimizer"])
        rng.bit_generator.state = r["numpy_rng"]
        torch.set_rng_state(r["torch_rng"])
        random.setstate(r["python_rng"])
        step, plateau_factor, stale = r["step"], r["plateau_factor"], r["stale"]
        best = TrainResult(r["best_state"], r["best_epoch"], r["best_val_accuracy"], list(r["history"]),
                           list(r["step_losses"]))
        first_epoch, seconds_before = r["epoch"] + 1, r["seconds"]
        if stale >= patience:  # it had stopped early; only the end was lost
            first_epoch = epochs + 1
    start = time.perf_counter() - seconds_before
    set_lr()
    for epoch in range(first_epoch, epochs + 1):
        if tp.embeddings in ("freeze_then_finetune", "multichannel"):
            model.set_embeddings_trainable(epoch > tp.freeze_epochs)
        if world > 1 and trainable != [p.requires_grad for p in model.parameters()]:
            # DistributedDataParallel syncs the parameters that needed gradients when it was made:
            # made again when the embeddings are unfrozen.
            from torch.nn.parallel import DistributedDataParallel

            forward = DistributedDataParallel(model)
            trainable = [p.requires_grad for p in model.parameters()]
        lr_at_start = optimizer.param_groups[0]["lr"]
        tr = run_epoch(model, train_x, train_y, tp.batch_size, device, optimizer, rng, tp.grad_clip,
                       tp.word_dropout, unk_id, progress=f"epoch {epoch}/{epochs}" if show_progress else None,
                       class_weight=weight, on_step=after_step, forward=forward, shard=shard,
                       noise_rng=noise_rng)
        tr = combined(tr, world)
        va = run_epoch(model, val_x, val_y, max(256, tp.batch_size), device)
        row = {"epoch": epoch, "train_loss": tr.loss, "train_accuracy": tr.accuracy, "val_loss": va.loss,
               "val_accuracy": va.accuracy, "lr": lr_at_start, "epoch_seconds": tr.seconds,
               "train_tokens_per_second": tr.tokens_per_second}
        best.history.append(row)
        if va.accuracy > best.best_val_accuracy:
            best.best_state = copy.deepcopy(model.state_dict())
            best.best_epoch, best.best_val_accuracy = epoch, va.accuracy
            stale = 0
        else:
            stale += 1
            if tp.lr_schedule == "plateau":
                plateau_factor *= 0.5
                set_lr()
        if on_epoch:
            on_epoch(step, row)
        if on_checkpoint:
            on_checkpoint({
                "epoch": epoch, "model": copy.deepcopy(model.state_dict()), "optimizer": optimizer.state_dict(),
                "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(), "step": step, "plateau_factor": plateau_factor, "stale": stale,
                "best_state": best.best_state, "best_epoch": best.best_epoch,
                "best_val_accuracy": best.best_val_accuracy, "history": best.history,
                "step_losses": best.step_losses, "seconds": time.perf_counter() - start,
            })
        if stale >= patience:
            break
    best.seconds = time.perf_counter() - start
    return best


def read_split(name: str) -> pd.DataFrame:
    return pd.read_parquet(PREPARED / f"{name}.parquet", columns=["tokens", "label"])


def label_ids(values: pd.Series, labels: list[str], name: str) -> np.ndarray:
    """Labels as class ids (the order of `labels`); a label the training split lacks is an error."""
    label_id = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted(set(values) - set(label_id))
    if unknown:
        raise PipelineError(f"{PREPARED / name}.parquet: label {unknown[0]!r} does not occur in the training split")
    return values.map(label_id).to_numpy(dtype=np.int64)


def encode_split(df: pd.DataFrame, name: str, stoi: dict[str, int], unk_id: int, labels: list[str],
                 max_tokens: int | None, truncation: str) -> tuple[list[np.ndarray], np.ndarray]:
    """A split's token lists as id sequences in memory (the benchmarks' way; the stage reads the
    vocab stage's compact ids through TokenIds, which gives the same sequences)."""
    return encode(df["tokens"], stoi, unk_id, max_tokens, truncation), label_ids(df["label"], labels, name)


def load_split(name: str, stoi: dict[str, int], unk_id: int, labels: list[str], max_tokens: int | None = None,
               truncation: str = "head") -> tuple[list[np.ndarray], np.ndarray]:
    """A prepared split as id sequences and label ids (used by the benchmarks)."""
    return encode_split(read_split(name), name, stoi, unk_id, labels, max_tokens, truncation)


def resolve_max_tokens(setting: str | int, train_lengths: np.ndarray) -> int:
    """train.max_tokens: a number as given, or auto: the 95th percentile of the training lengths, bounded."""
    if setting == "auto":
        return auto_max_tokens(train_lengths, P.AUTO_MIN_TOKENS, P.AUTO_MAX_TOKENS)
    return int(setting)


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


def run_key(tp: P.TrainParams, prep: P.PrepareParams, threads: int, inputs: list[Path],
            code: tuple[str, ...] = TRAIN_CODE) -> str:
    """What identifies a training run: its params and thread count (float sums depend on it), the
    bytes of its inputs and of the training code. A resume state is used only by a run with the same key."""
    digest = hashlib.sha256(json.dumps([tp.__dict__, prep.__dict__, threads], sort_keys=True, default=str).encode())
    for path in [*inputs, *map(Path, code)]:
        digest.update(str(path).encode())
        if path.is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def save_resume_state(path: Path, key: str, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save({"key": key, **state}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_resume_state(path: Path, key: str) -> dict | None:
    """The state an interrupted run with this key left, or None (none, another run's, or unreadable)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # a file this stage wrote
    except Exception as err:  # a damaged file costs the epochs it held, nothing more
        print(f"warning: {path}: cannot read the resume state ({err}); training from the start", file=sys.stderr)
        return None
    return state if isinstance(state, dict) and state.get("key") == key else None


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


def launch_processes(processes: int) -> None:
    """`train.processes` > 1 on one machine: this stage again under torchrun, one process per share.
    (Across machines, run torchrun yourself with its rendezvous flags: README, 'Past one machine'.)"""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "pipeline.train"]
    print(f"training in {processes} processes: {' '.join(cmd[1:])}", flush=True)
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise PipelineError(f"training under torchrun failed (exit status {code}); see the processes' output above")


def main() -> None:
    tp, prep = P.load("train"), P.load("prepare")
    if tp.processes > 1 and "LOCAL_RANK" not in os.environ:
        return launch_processes(tp.processes)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    set_determinism(tp.seed)
    device = resolve_device(tp.device)
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":  # one GPU per process on each machine
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = cpu_share(tp.threads, len(os.sched_getaffinity(0)) // local_processes or 1)
    torch.set_num_threads(threads)
    try:
        train_and_save(tp, prep, device, threads, rank, world)
    finally:
        if world > 1:
            dist.destroy_process_group()


def train_and_save(tp: P.TrainParams, prep: P.PrepareParams, device: torch.device, threads: int, rank: int,
                   world: int) -> None:
    """Load the data, train, and (process 0 only, when there are several) write the model and metrics."""
    from dvclive import Live

    vocab = read_json(VOCAB_DIR / "vocab.json")
    itos, unk_id = vocab["itos"], vocab["unk_id"]
    matrix = np.load(VOCAB_DIR / "embeddings.npy")
    # The texts as the vocab stage's compact ids, memory-mapped (4 bytes a token, read as batches ask):
    # no token strings are read here. Labels from the prepared splits.
    train_labels, val_labels = (pd.read_parquet(PREPARED / f"{name}.parquet", columns=["label"])["label"]
                                for name in ("train", "val"))
    labels = sorted(train_labels.unique().tolist())
    lengths = TokenIds(VOCAB_DIR, "train", unk_id).full_lengths
    max_tokens = resolve_max_tokens(tp.max_tokens, lengths)
    if rank == 0:
        print(f"{world} process(es) of {threads} CPU thread(s); model input: at most {max_tokens} tokens "
              f"({tp.truncation}); {(lengths > max_tokens).mean():.1%} of training texts are longer", flush=True)
    train_x = TokenIds(VOCAB_DIR, "train", unk_id, max_tokens, tp.truncation)
    val_x = TokenIds(VOCAB_DIR, "val", unk_id, max_tokens, tp.truncation)
    train_y, val_y = label_ids(train_labels, labels, "train"), label_ids(val_labels, labels, "val")

    model = build_model(tp, matrix, len(labels))
    if world > 1:
        torch.manual_seed(tp.seed + rank)  # the same initial weights everywhere; each its own dropout
        shard = (rank, world)
        if rank != 0:  # the others train their share and write nothing
            fit(model, tp, train_x, train_y, val_x, val_y, device, unk_id, shard=shard)
            return
    key = run_key(tp, prep, threads, [PREPARED / "train.parquet", PREPARED / "val.parquet", VOCAB_DIR / "vocab.json",
                             VOCAB_DIR / "embeddings.npy"])
    # Resuming is for one process: under torchrun the state would be each process's own.
    resume_from = load_resume_state(RESUME_PATH, key) if world == 1 else None
    if resume_from is not None:
        print(f"resuming after epoch {resume_from['epoch']} (from {RESUME_PATH}, left by an interrupted run "
              "with the same params and data)", flush=True)
    # DVCLive writes into a staging folder that replaces metrics/train only when training is done, so
    # an interrupted run never leaves its epochs where `dvc metrics show` would take them for current.
    with atomic_path(LIVE_DIR) as staging:
        with Live(dir=str(staging), dvcyaml=None, save_dvc_exp=False, report=None) as live:
            logger = LiveLogger(live, tp.log_every_steps, tp.lr)
            if resume_from is not None:
                logger.replay(resume_from["live_events"])
            result = fit(model, tp, train_x, train_y, val_x, val_y, device, unk_id, logger.epoch,
                         show_progress=os.environ.get("CI") != "true", on_step=logger.step,
                         resume_from=resume_from, shard=(rank, world),
                         on_checkpoint=None if world > 1 else lambda state: save_resume_state(
                             RESUME_PATH, key, {**state, "live_events": logger.events}))
            live.summary["best_epoch"] = result.best_epoch
            live.summary["best_val_accuracy"] = result.best_val_accuracy
            live.summary["train_seconds"] = round(result.seconds, 2)
            live.summary["max_tokens"] = max_tokens
            live.summary["threads"] = threads
            live.summary["processes"] = world
        # The saved model's figures, not the last epoch's (DVCLive's summary holds the last values).
        write_json(staging / BEST, {"lstm_val_acc": round(result.best_val_accuracy, 4),
                                    "lstm_best_epoch": result.best_epoch})
        plot_curves(result, staging / "curves.png")
        # No timings in the checkpoint: the same params and seed give the same weights and metadata.
        info = {"best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy,
                "params": tp.__dict__, "threads": threads, "processes": world}
        save_checkpoint(MODEL_PATH, model, result.best_state, itos, labels, TextConfig.from_params(prep), unk_id,
                        info, max_tokens, tp.truncation)
    RESUME_PATH.unlink(missing_ok=True)
    print(f"best epoch {result.best_epoch}: val accuracy {result.best_val_accuracy:.4f}; "
          f"{result.seconds:.1f}s; saved {MODEL_PATH}")


if __name__ == "__main__":
    run_main(main)
