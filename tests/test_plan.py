"""The training plan (pipeline.plan): every "auto" of train.* resolved once, into a frozen plan that
fit and its Trainer read."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.plan import make_plan, resolve_precision
from tests.helpers import fit_toy, train_params


def test_the_plan_resolves_every_auto_once_and_is_frozen(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    tp = train_params(device="cpu", precision="auto", threads="auto", max_tokens="auto", epochs=15, patience=5,
                      min_steps=1000, batch_size=32, embeddings="freeze_then_finetune", freeze_epochs=3)
    plan = make_plan(tp, np.arange(1, 1185), unk_id=7)  # 1,184 texts: 37 batches an epoch
    assert plan.params is tp and plan.device == torch.device("cpu") and plan.unk_id == 7
    assert plan.precision == resolve_precision("auto", torch.device("cpu")) and plan.bf16 == (plan.precision == "bf16")
    assert isinstance(plan.threads, int) and plan.threads >= 1
    assert plan.max_tokens == 800          # the 95th percentile of 1..1184, within 128..800
    assert (plan.steps_per_epoch, plan.epochs, plan.patience) == (37, 28, 10)  # stretched to reach min_steps
    assert plan.total_steps == 37 * 28
    assert plan.unfreeze_epoch == 4        # frozen for freeze_epochs, training from the next
    assert (plan.rank, plan.world) == (0, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.epochs = 3  # type: ignore[misc]
    # Numbers are taken as they are; embeddings that are never frozen by epoch have no unfreeze epoch.
    fixed = make_plan(dataclasses.replace(tp, precision="fp32", threads=3, max_tokens=50, min_steps=0,
                                          embeddings="finetune"), np.arange(1, 1185))
    assert (fixed.precision, fixed.threads, fixed.max_tokens, fixed.epochs, fixed.patience) == ("fp32", 3, 50, 15, 5)
    assert fixed.unfreeze_epoch is None
    assert make_plan(dataclasses.replace(tp, embeddings="multichannel"), [3] * 64).unfreeze_epoch == 4


def test_the_plan_reads_torchrun_s_rank_and_world_size(monkeypatch):
    """Under torchrun each process takes every world-th batch: the steps of an epoch are its share."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    tp = train_params(device="cpu", batch_size=10, min_steps=0, threads="auto")
    plan = make_plan(tp, [5] * 100)
    assert (plan.rank, plan.world, plan.steps_per_epoch) == (1, 2, 5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_asked_for_without_a_gpu_is_one_line():
    with pytest.raises(PipelineError, match=r"^params\.yaml: 'train\.device' is 'cuda' but no CUDA device is available$"):
        make_plan(train_params(device="cuda"), [5] * 10)


def test_a_plan_stretched_says_so_and_a_run_too_short_to_unfreeze_warns(capsys):
    fit_toy(train_params(epochs=2, patience=1, min_steps=30))  # 12 steps an epoch: stretched to 3 epochs
    out, _ = capsys.readouterr()
    assert "train.epochs 2 and train.patience 1 stretched to 3 and 2: 12 optimizer steps an epoch" in out
