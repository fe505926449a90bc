"""Process-group setup for ``torchrun``: one process per device, NCCL on GPUs, gloo on CPUs.

Under torchrun's elastic agent the workers meet through the agent's own TCP store, which
outlives a restart of the worker group; the process group's keys (each rank's address) from the
group before a restart are still in it. A restarted rank that reads its peer's address before
the new peer has written it connects to a dead process: gloo's ``connectFullMesh`` is refused
(NCCL's bootstrap likewise, pytorch/pytorch#167288). Each group therefore keys its process group
under its restart count (``TORCHELASTIC_RESTART_COUNT``): a restarted group never sees the keys
of the group before it.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def group_store_prefix() -> str:
    """The store prefix of this worker group's process group: one per elastic restart."""
    return f"nsneg/restart-{int(os.environ.get('TORCHELASTIC_RESTART_COUNT', '0'))}"


def _init_process_group(backend: str) -> None:
    """``init_process_group(backend)`` from torchrun's env://, its keys under this group's prefix."""
    store, rank, world_size = next(dist.rendezvous("env://"))
    store = dist.PrefixStore(group_store_prefix(), store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)


def setup_distributed() -> str | None:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: NCCL on GPUs, gloo on CPUs. Returns the device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if torch.cuda.is_available():
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        _init_process_group("nccl")
        return f"cuda:{local_rank}"
    _init_process_group("gloo")
    return "cpu"
