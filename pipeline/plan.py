"""The training plan: a run's settings resolved once, every "auto" in this module.

    plan = make_plan(train_params, train_lengths, unk_id)

reads `train.*` and the machine (its GPU, its CPU's bf16 instructions, its cores and DVC queue workers,
torchrun's environment) and the training texts' lengths, and returns a frozen TrainPlan: the device, the
precision, the threads, the model's input length, the epochs and patience (stretched on small corpora),
the epoch the embeddings unfreeze, and this process's rank among how many. `training.fit` and its
Trainer read the plan and resolve nothing; the train stage applies it (threads, the process group) and
records it (the model's metadata, DVCLive's summary).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch

from pipeline import distributed
from pipeline.batching import auto_max_tokens
from pipeline.errors import PipelineError
from pipeline.params import AUTO_MAX_TOKENS, AUTO_MIN_TOKENS, TrainParams
from pipeline.resources import cpu_share
from pipeline.tasks import DEFAULT, Task, get_task

# Settings of train.embeddings whose embeddings start frozen and train from epoch freeze_epochs + 1.
UNFREEZING = ("freeze_then_finetune", "multichannel")


@dataclass(frozen=True)
class TrainPlan:
    """One training run, resolved: what `fit` and its Trainer read (`params` for the rest, as written)."""
    params: TrainParams
    device: torch.device
    precision: Literal["bf16", "fp32"]
    threads: int                  # CPU threads (the stage sets them; fit leaves them as they are)
    max_tokens: int               # the model reads at most this many tokens of a text
    steps_per_epoch: int          # optimizer steps an epoch, in each process
    epochs: int                   # train.epochs, or stretched to reach train.min_steps
    patience: int                 # train.patience, stretched alike
    unfreeze_epoch: int | None    # the first epoch the embeddings train; None: they are never frozen by epoch
    rank: int = 0                 # this process among `world` (torchrun's); 0 of 1 alone
    world: int = 1
    unk_id: int = 1               # what word dropout hides a token behind
    show_progress: bool = False   # a progress bar per epoch
    task: Task = field(default_factory=lambda: get_task(DEFAULT))  # the loss, the decision rule (tasks.py)

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def make_plan(tp: TrainParams, train_lengths: Sequence[int], unk_id: int = 1, show_progress: bool = False,
              task: str = DEFAULT) -> TrainPlan:
    """The plan of a run of `tp` for `task` (a name in tasks.TASKS) on training texts of these lengths (in
    tokens, before truncation), in this process (torchrun's rank and world size when it launched it; 0
    and 1 otherwise)."""
    rank, world = distributed.rank_and_world()
    device = resolve_device(tp.device, world)
    lengths = np.asarray(train_lengths)
    steps_per_epoch = math.ceil(len(lengths) / tp.batch_size) // world
    epochs, patience = stretched_epochs(tp, steps_per_epoch)
    return TrainPlan(
        params=tp, device=device, precision=resolve_precision(tp.precision, device),
        threads=cpu_share(tp.threads, len(os.sched_getaffinity(0)) // distributed.local_processes() or 1),
        max_tokens=resolve_max_tokens(tp.max_tokens, lengths), steps_per_epoch=steps_per_epoch,
        epochs=epochs, patience=patience,
        unfreeze_epoch=tp.freeze_epochs + 1 if tp.embeddings in UNFREEZING else None,
        rank=rank, world=world, unk_id=unk_id, show_progress=show_progress, task=get_task(task))


def announce(plan: TrainPlan) -> None:
    """Say where the plan departs from the params as written (process 0 only)."""
    tp = plan.params
    if plan.rank != 0:
        return
    if plan.epochs != tp.epochs:
        print(f"train.epochs {tp.epochs} and train.patience {tp.patience} stretched to {plan.epochs} and "
              f"{plan.patience}: {plan.steps_per_epoch} optimizer steps an epoch would make fewer than "
              f"train.min_steps={tp.min_steps} (min_steps: 0 keeps them as set)", flush=True)
    if tp.embeddings == "freeze_then_finetune" and plan.epochs <= tp.freeze_epochs:
        print(f"warning: train.epochs ({plan.epochs}) <= train.freeze_epochs ({tp.freeze_epochs}): the embeddings "
              "stay frozen for the whole run; lower freeze_epochs to fine-tune them", file=sys.stderr, flush=True)


def resolve_device(name: str, world: int = 1) -> torch.device:
    """train.device: auto (a GPU when there is one, else the CPU), cpu or cuda; under torchrun with
    several processes on GPUs, each process's own (LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("params.yaml: 'train.device' is 'cuda' but no CUDA device is available")
    if name == "cuda" and world > 1:
        return torch.device("cuda", distributed.local_rank())
    return torch.device(name)


def resolve_max_tokens(setting: str | int, train_lengths: np.ndarray) -> int:
    """train.max_tokens: a number as given, or auto: the 95th percentile of the training lengths, bounded."""
    if setting == "auto":
        return auto_max_tokens(train_lengths, AUTO_MIN_TOKENS, AUTO_MAX_TOKENS)
    return int(setting)


def stretched_epochs(tp: TrainParams, steps_per_epoch: int) -> tuple[int, int]:
    """(epochs, patience): as set, or stretched alike until training takes at least min_steps optimizer
    steps. A corpus of 1,200 long reviews has 37 batches an epoch: 15 epochs are too few updates."""
    epochs = max(tp.epochs, math.ceil(tp.min_steps / steps_per_epoch))
    return epochs, math.ceil(tp.patience * epochs / tp.epochs)


def onednn_bf16() -> bool:
    """Whether oneDNN, which runs the CPU's LSTM, will run it in bf16 here (False on an AVX2-only CPU, or
    under ONEDNN_MAX_CPU_ISA=AVX2: there its LSTM answers "could not create a primitive descriptor")."""
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else True
    except RuntimeError:
        return False


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 in hardware: a CUDA GPU that supports it, or a CPU with AMX or
    AVX512-BF16 instructions (recent Xeons and EPYCs) that oneDNN may use. Elsewhere bf16 is emulated,
    slower than fp32, or (an AVX2-only CPU) not there at all."""
    if device.type == "cuda":  # Ampere on; older GPUs emulate it
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16")) and onednn_bf16()


def resolve_precision(setting: str, device: torch.device) -> str:
    """train.precision: 'bf16' (autocast: matrix products in bfloat16, weights, optimizer and loss in
    float32) or 'fp32'. auto: bf16 where the device computes it natively. On a 2-core Xeon with AMX the
    LSTM's forward and backward take about 20% less time, training on the built-in snippets 7% less, with
    the same validation accuracy over three seeds (docs/results.md). bf16 asked for on a device without
    it is an error (the same check as auto's), not a silent fp32 run nor oneDNN's traceback."""
    if setting == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if setting == "bf16" and not native_bf16(device):
        what = ("this GPU has no bf16 arithmetic (Ampere or later has it)" if device.type == "cuda" else
                "this CPU has no bf16 instructions (AMX or AVX512-BF16) that oneDNN can use"
                if device.type == "cpu" else f"the {device.type} device has no bf16")
        raise PipelineError(f"params.yaml: 'train.precision' is bf16, but {what}: set it to auto (bf16 where the "
                            "hardware has it) or fp32")
    return setting
