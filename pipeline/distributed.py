"""Data-parallel training with PyTorch's own engine: torchrun launches the processes, gloo (CPU) or NCCL
(GPUs) connects them, DistributedDataParallel averages the gradients. Nothing home-made."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from pipeline.errors import PipelineError


def launched() -> bool:
    """Whether this process is one of torchrun's."""
    return "LOCAL_RANK" in os.environ


def launch(processes: int, module: str) -> None:
    """`train.processes` > 1 on one machine: `module` again under torchrun, one process per share.
    (Across machines, run torchrun yourself with its rendezvous flags: docs/scale.md.)"""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", module]
    print(f"training in {processes} processes: {' '.join(cmd[1:])}", flush=True)
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise PipelineError(f"training under torchrun failed (exit status {code}); see the processes' output above")


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def local_processes() -> int:
    """torchrun's processes on this machine (1 outside torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's number among torchrun's on this machine (its GPU, on GPUs)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def start(device: torch.device) -> None:
    """Join the process group: NCCL on this process's GPU (`device`, the plan's: cuda:LOCAL_RANK), gloo
    on the CPU."""
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def stop() -> None:
    import torch.distributed as dist

    dist.destroy_process_group()


def data_parallel(model: torch.nn.Module) -> torch.nn.Module:
    """The model wrapped for gradient averaging. DistributedDataParallel syncs the parameters that need
    gradients when it is made, so it is made again when the embeddings are unfrozen."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def all_summed(values: list[float]) -> list[float]:
    """Each value summed over all processes of the group (an all-reduce, in float64)."""
    import torch.distributed as dist

    totals = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(totals)
    return totals.tolist()
