"""The training loop: a training step, an evaluation step, an epoch of each, and early stopping.

    fit(model, plan, ((train_sequences, train_labels), (val_sequences, val_labels)))

trains with Adam and early stopping on validation accuracy and returns the best epoch's weights. The
plan (plan.py) is the run with every setting resolved: device, precision, epochs and patience, ...; this
module resolves none. After each epoch it hands a TrainState to `hooks.on_checkpoint`:
`fit(..., resume=state)` goes on from it and ends as the uninterrupted run would have, to the bit on the
same machine (resume.py stores it).

Under torchrun (the plan's rank and world size, the process group initialised; distributed.py) each process
trains on its share of every epoch's batches through DistributedDataParallel, which averages the
gradients; every process then holds the same weights, measures the same validation accuracy and stops
at the same epoch.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline import distributed
from pipeline.batching import bucket_batches, pad_batch, sequence_lengths
from pipeline.errors import PipelineError
from pipeline.model import ModelConfig, TextClassifier
from pipeline.params import TrainParams
from pipeline.plan import TrainPlan, announce
from pipeline.tasks import SINGLE_LABEL, Task

# What an epoch reads: id sequences (a list, or batching.TokenIds) and their class ids.
Split = tuple[Sequence[np.ndarray], np.ndarray]


def set_determinism(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Denormal floats make the CPU backward pass of long sequences about ten times slower.
    torch.set_flush_denormal(True)


def build_model(tp: TrainParams, matrix: np.ndarray, num_classes: int) -> TextClassifier:
    cfg = ModelConfig(
        vocab_size=matrix.shape[0], embedding_dim=matrix.shape[1], num_classes=num_classes,
        hidden_size=tp.hidden_size, num_layers=tp.num_layers, bidirectional=tp.bidirectional,
        dropout=tp.dropout, embedding_dropout=tp.embedding_dropout, pooling=tp.pooling,
        embedding_channels=2 if tp.embeddings == "multichannel" else 1, encoder=tp.encoder,
    )
    pretrained = None if tp.embeddings == "random" else torch.from_numpy(matrix)
    freeze = tp.embeddings in ("frozen", "freeze_then_finetune", "multichannel")
    return TextClassifier(cfg, pretrained, freeze_embeddings=freeze)


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
    best_state: dict         # the best epoch's weights
    best_epoch: int
    best_val_accuracy: float
    history: list[dict] = field(default_factory=list)       # one row per epoch
    step_losses: list[float] = field(default_factory=list)  # one per optimizer step
    seconds: float = 0.0


@dataclass
class TrainState:
    """Everything needed to go on after a finished epoch (what the resume file holds)."""
    epoch: int
    model: dict              # this epoch's weights (not necessarily the best)
    optimizer: dict
    numpy_rng: dict          # batch order
    torch_rng: torch.Tensor  # dropout
    python_rng: tuple
    step: int                # optimizer steps taken
    plateau_factor: float
    stale: int               # epochs since the best
    result: TrainResult
    seconds: float


@dataclass
class Hooks:
    """Callbacks: on_step(step, {loss, lr}) after every optimizer step; on_epoch(step, row) after each
    epoch (row: the epoch's figures); on_checkpoint(TrainState) after each epoch; stop(epoch, val_accuracy)
    after each epoch: True ends training there, keeping the best epoch so far (a search's pruner)."""
    on_step: Callable[[int, dict], None] | None = None
    on_epoch: Callable[[int, dict], None] | None = None
    on_checkpoint: Callable[[TrainState], None] | None = None
    stop: Callable[[int, float], bool] | None = None


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate before optimizer step `step` (counted from 0)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def diverged(what: str, tp: TrainParams, lr: float) -> PipelineError:
    """The error of a training that went non-finite (a NaN or infinite loss or weight): nothing is saved."""
    clip = "lower train.grad_clip" if tp.grad_clip else "set train.grad_clip (e.g. 1.0)"
    return PipelineError(f"{what}: training diverged, and no model is saved; lower train.lr (now {tp.lr:g}, "
                         f"{lr:g} at that step) or {clip}")


def finite_weights(state: dict) -> str | None:
    """The name of the first floating-point tensor of `state` holding a NaN or an infinity, or None."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


@torch.no_grad()
def eval_step(model: nn.Module, ids: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor,
              task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch measured: its summed loss and its logits (in float32, as the evaluate stage and the
    exported model compute them: validation picks the epoch whose saved weights score best)."""
    logits = model(ids, lengths)
    loss = task.loss(logits, target)
    return loss, logits


def evaluate(model: TextClassifier, data: Split, batch_size: int, device: torch.device,
             task: Task = SINGLE_LABEL) -> EpochResult:
    """The task's loss and accuracy over a split, in length-sorted batches."""
    sequences, labels = data
    model.eval()
    lengths = sequence_lengths(sequences)
    batches = bucket_batches(lengths, batch_size)
    total_loss, correct, tokens = 0.0, 0, 0
    start = time.perf_counter()
    for index in batches:
        ids, lens = pad_batch(sequences, index, model.cfg.pad_id)
        target = torch.from_numpy(labels[index]).to(device)
        loss, logits = eval_step(model, ids.to(device, non_blocking=True), lens.to(device, non_blocking=True),
                                 target, task)
        total_loss += loss.item()
        correct += task.correct(logits, target)
        tokens += int(lengths[index].sum())
    return EpochResult(total_loss / len(labels), correct / len(labels), tokens, time.perf_counter() - start,
                       len(labels))


class Trainer:
    """One training run's moving parts: the model, its optimizer and schedule, the random generators,
    and the early-stopping state. `fit` drives it; `train_epoch` is one pass over the training split."""

    def __init__(self, model: TextClassifier, plan: TrainPlan, train: Split,
                 on_step: Callable[[int, dict], None] | None = None):
        tp, device = plan.params, plan.device
        self.model, self.plan, self.tp, self.train, self.device, self.on_step = model, plan, tp, train, device, on_step
        model.to(device)
        # Frozen embeddings get no gradient, and Adam skips them until they are unfrozen. Fused: once the
        # embeddings train, Adam's update of the whole matrix was a quarter of an epoch on the CPU; the
        # fused kernel does it in one pass, about 3x faster (the same algorithm; the last bits differ).
        self.optimizer = torch.optim.Adam(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay,
                                          fused=device.type in ("cpu", "cuda") or None)
        self.plateau_factor = 1.0  # 'plateau' halves it after each epoch without a better validation accuracy
        self.step = 0
        self.stale = 0
        self.task = plan.task
        weight = self.task.loss_weights(train[1], model.cfg.num_classes, tp.class_weights)
        self.weight = None if weight is None else weight.to(device)  # what the gradient follows (the loss reported: unweighted)
        self.rng = np.random.default_rng(tp.seed)  # batch order: the same in every process
        # Word dropout: each process its own noise.
        self.noise_rng = np.random.default_rng([tp.seed, plan.rank]) if plan.world > 1 else self.rng
        self.forward: nn.Module = model  # or its DistributedDataParallel wrapper
        self.trainable: list[bool] | None = None
        self.result = TrainResult(copy.deepcopy(model.state_dict()), 0, -1.0)

    def set_lr(self) -> float:
        tp = self.tp
        lr = tp.lr * self.plateau_factor * lr_factor(tp.lr_schedule, self.step, self.plan.total_steps, tp.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def start_epoch(self, epoch: int) -> None:
        """Unfreeze the embeddings when their frozen epochs are over (and re-wrap for DDP)."""
        if self.plan.unfreeze_epoch is not None:
            self.model.set_embeddings_trainable(epoch >= self.plan.unfreeze_epoch)
        if self.plan.world > 1:
            trainable = [p.requires_grad for p in self.model.parameters()]
            if trainable != self.trainable:
                self.forward, self.trainable = distributed.data_parallel(self.model), trainable

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches: shuffled, length-bucketed; under torchrun, every world-th one, as many
        in each process."""
        batches = bucket_batches(sequence_lengths(self.train[0]), self.tp.batch_size, self.rng)
        rank, world = self.plan.rank, self.plan.world
        if world > 1:
            batches = batches[rank: len(batches) - len(batches) % world: world]
        return batches

    def hide_words(self, ids: torch.Tensor) -> torch.Tensor:
        """Word dropout: hide random tokens behind <unk> so the model cannot lean on any one word."""
        hide = torch.from_numpy(self.noise_rng.random(ids.shape) < self.tp.word_dropout) & (ids != self.model.cfg.pad_id)
        return ids.masked_fill(hide, self.plan.unk_id)

    def train_epoch(self, epoch: int) -> EpochResult:
        sequences, labels = self.train
        self.model.train()
        lengths = sequence_lengths(sequences)
        batches = self.batches()
        total_loss, correct, tokens = 0.0, 0, 0
        start = time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {epoch}/{self.plan.epochs}", leave=False, unit="batch",
                   disable=not self.plan.show_progress or None)
        for index in bar:
            ids, lens = pad_batch(sequences, index, self.model.cfg.pad_id)
            if self.tp.word_dropout:
                ids = self.hide_words(ids)
            target = torch.from_numpy(labels[index]).to(self.device)
            loss, logits = self.train_step(ids.to(self.device, non_blocking=True),
                                           lens.to(self.device, non_blocking=True), target)
            batch_loss = loss.item()
            if not math.isfinite(batch_loss):
                raise diverged(f"epoch {epoch}, optimizer step {self.step + 1}: the training loss is {batch_loss}",
                               self.tp, self.optimizer.param_groups[0]["lr"])
            self.after_step(batch_loss / len(index))
            total_loss += batch_loss
            correct += self.task.correct(logits, target)
            tokens += int(lengths[index].sum())
            if bar.n % 20 == 0:
                bar.set_postfix(loss=f"{total_loss / max(1, bar.n * self.tp.batch_size):.3f}",
                                tok_s=f"{tokens / max(time.perf_counter() - start, 1e-9):,.0f}")
        examples = sum(len(index) for index in batches)
        result = EpochResult(total_loss / examples, correct / examples, tokens, time.perf_counter() - start, examples)
        if self.plan.world > 1:  # the epoch over all processes' shares
            loss_sum, correct_sum, n, tokens = distributed.all_summed(
                [result.loss * result.examples, result.accuracy * result.examples, result.examples, result.tokens])
            result = replace(result, loss=loss_sum / n, accuracy=correct_sum / n, tokens=int(tokens), examples=int(n))
        return result

    def train_step(self, ids: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on one batch: the batch's summed (unweighted) loss, and its logits.

        Through `forward`: the model, or its DistributedDataParallel wrapper (which averages the
        gradients); with class weights, the weighted loss is the one the gradient follows; the
        forward pass under bf16 autocast when the plan says bf16."""
        with torch.autocast(device_type=ids.device.type, dtype=torch.bfloat16, enabled=self.plan.bf16):
            logits = self.forward(ids, lengths)  # (batch, classes)
            loss = self.task.loss(logits.float(), target)
        objective = loss if self.weight is None else self.task.loss(logits.float(), target, self.weight)
        self.optimizer.zero_grad(set_to_none=True)
        (objective / len(target)).backward()
        if self.tp.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.tp.grad_clip)
        self.optimizer.step()
        return loss, logits

    def after_step(self, loss: float) -> None:
        self.result.step_losses.append(loss)
        if self.on_step:
            self.on_step(self.step + 1, {"loss": loss, "lr": self.optimizer.param_groups[0]["lr"]})
        self.step += 1
        self.set_lr()

    def end_epoch(self, epoch: int, val_accuracy: float) -> None:
        """Keep the best weights; count the epochs since; halve the rate on a plateau."""
        if val_accuracy > self.result.best_val_accuracy:
            self.result.best_state = copy.deepcopy(self.model.state_dict())
            self.result.best_epoch, self.result.best_val_accuracy = epoch, val_accuracy
            self.stale = 0
        else:
            self.stale += 1
            if self.tp.lr_schedule == "plateau":
                self.plateau_factor *= 0.5
                self.set_lr()

    def state(self, epoch: int, seconds: float) -> TrainState:
        """A snapshot: later epochs change none of it."""
        result = TrainResult(self.result.best_state, self.result.best_epoch, self.result.best_val_accuracy,
                             list(self.result.history), list(self.result.step_losses))
        return TrainState(epoch, copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict()),
                          self.rng.bit_generator.state, torch.get_rng_state(), random.getstate(), self.step,
                          self.plateau_factor, self.stale, result, seconds)

    def restore(self, state: TrainState) -> None:
        self.model.load_state_dict(state.model)
        if self.plan.unfreeze_epoch is not None:  # as the optimizer last saw it
            self.model.set_embeddings_trainable(state.epoch >= self.plan.unfreeze_epoch)
        self.optimizer.load_state_dict(state.optimizer)
        self.rng.bit_generator.state = state.numpy_rng
        torch.set_rng_state(state.torch_rng)
        random.setstate(state.python_rng)
        self.step, self.plateau_factor, self.stale = state.step, state.plateau_factor, state.stale
        saved = state.result
        self.result = TrainResult(saved.best_state, saved.best_epoch, saved.best_val_accuracy, list(saved.history),
                                  list(saved.step_losses))


def fit(model: TextClassifier, plan: TrainPlan, data: tuple[Split, Split], hooks: Hooks | None = None,
        resume: TrainState | None = None) -> TrainResult:
    """Train on data = (train, val) as the plan says, with early stopping on validation accuracy; the best
    epoch's weights and the history."""
    hooks = hooks or Hooks()
    train, val = data
    tp, device, epochs = plan.params, plan.device, plan.epochs
    trainer = Trainer(model, plan, train, hooks.on_step)
    announce(plan)
    first_epoch, seconds_before = 1, 0.0
    if resume is not None:
        trainer.restore(resume)
        first_epoch, seconds_before = resume.epoch + 1, resume.seconds
        if trainer.stale >= plan.patience:  # it had stopped early; only the end was lost
            first_epoch = epochs + 1
    start = time.perf_counter() - seconds_before
    trainer.set_lr()
    for epoch in range(first_epoch, epochs + 1):
        trainer.start_epoch(epoch)
        lr_at_start = trainer.optimizer.param_groups[0]["lr"]
        train_result = trainer.train_epoch(epoch)
        val_result = evaluate(model, val, max(256, tp.batch_size), device, plan.task)
        row = {"epoch": epoch, "train_loss": train_result.loss, "train_accuracy": train_result.accuracy,
               "val_loss": val_result.loss, "val_accuracy": val_result.accuracy, "lr": lr_at_start,
               "epoch_seconds": train_result.seconds, "train_tokens_per_second": train_result.tokens_per_second}
        trainer.result.history.append(row)
        bad = None if math.isfinite(val_result.loss) else f"the validation loss is {val_result.loss}"
        if bad is None and (name := finite_weights(model.state_dict())) is not None:
            bad = f"weight {name!r} is not finite"
        if bad is not None:  # never kept as the best epoch: a NaN model scores some accuracy too
            raise diverged(f"epoch {epoch}, after optimizer step {trainer.step}: {bad}", tp,
                           trainer.optimizer.param_groups[0]["lr"])
        trainer.end_epoch(epoch, val_result.accuracy)
        if hooks.on_epoch:
            hooks.on_epoch(trainer.step, row)
        if hooks.on_checkpoint:
            hooks.on_checkpoint(trainer.state(epoch, time.perf_counter() - start))
        if trainer.stale >= plan.patience or (hooks.stop is not None and hooks.stop(epoch, val_result.accuracy)):
            break
    trainer.result.seconds = time.perf_counter() - start
    return trainer.result
