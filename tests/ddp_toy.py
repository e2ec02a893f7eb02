"""Run by tests under torchrun: the toy problem of tests/helpers.py trained data-parallel. Each process
writes $DDP_TOY_OUT/rank<N>.json (its rank, the validation accuracy and a checksum of its final
weights): one file each, since lines printed at once by two processes can interleave."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.training import build_model, fit, set_determinism
from tests.helpers import cpu_plan, toy_matrix, toy_problem, train_params

# What the test compares with one process's run of the same params.
DDP_PARAMS = dict(epochs=8, patience=8, word_dropout=0.1, embeddings="freeze_then_finetune", freeze_epochs=2,
                  batch_size=8)


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    tp = train_params(**DDP_PARAMS)
    set_determinism(tp.seed)
    model = build_model(tp, toy_matrix(), 2)
    torch.manual_seed(tp.seed + rank)
    xs, ys = toy_problem()
    plan = cpu_plan(tp, xs[:180])  # rank and world size: torchrun's
    assert (plan.rank, plan.world) == (rank, world)
    result = fit(model, plan, ((xs[:180], ys[:180]), (xs[180:], ys[180:])))
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    out = Path(os.environ["DDP_TOY_OUT"]) / f"rank{rank}.json"
    out.write_text(json.dumps({"rank": rank, "world": world, "val": result.best_val_accuracy,
                               "epochs": len(result.history), "checksum": checksum,
                               "steps": len(result.step_losses)}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
