"""Process-group setup for ``torchrun``: one process per device, NCCL on GPUs, gloo on CPUs."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup_distributed() -> str | None:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: NCCL on GPUs, gloo on CPUs. Returns the device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if torch.cuda.is_available():
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return f"cuda:{local_rank}"
    dist.init_process_group("gloo")
    return "cpu"
