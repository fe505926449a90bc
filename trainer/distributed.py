"""Process-group setup for ``torchrun``: one process per device, NCCL on GPUs, gloo on CPUs.

Under torchrun's elastic agent the workers meet through the agent's own TCP store, which
outlives a restart of the worker group: the keys of the group before a restart (each rank's
address) are still in it. A restarted rank that reads its peer's address before the new peer
has written it connects to a dead process: gloo's ``connectFullMesh`` is refused (NCCL's
bootstrap likewise, pytorch/pytorch#167288). The restart count cannot name the group: each
node's agent counts its own (a node whose workers were healthy when another's failed restarts
without counting). So the ranks first agree on a fresh name for their group (``group_key``),
and the process group keeps its keys under it: a restarted group never reads the keys of the
group before it.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta

import torch
import torch.distributed as dist

#: Store keys of the handshake (``group_key``).
ROOT = "nsneg/group"
POLL_S = 0.02


def group_key(store: dist.Store, rank: int, world_size: int, timeout: timedelta) -> str:
    """A name for this worker group that every rank of it agrees on and no earlier group used.

    Keys left in ``store`` by earlier groups can be read but never mistaken for this group's:
    rank r asks under a fresh token of its own (``want/r`` = token), rank 0 answers every token it
    reads with a fresh group name (``answer/<token>``), and keeps answering until every rank has
    confirmed under that name. A stale ``want/r`` gets an answer nobody waits for.
    """
    if rank:
        token = uuid.uuid4().hex
        store.set(f"{ROOT}/want/{rank}", token)
        key = store.get(f"{ROOT}/answer/{token}").decode()  # blocks up to the store's timeout
        store.set(f"{ROOT}/{key}/ok/{rank}", "1")
        return key
    key = uuid.uuid4().hex
    answered: dict[int, str] = {}
    pending = set(range(1, world_size))
    deadline = time.monotonic() + timeout.total_seconds()
    while pending:
        for r in sorted(pending):
            if store.check([f"{ROOT}/{key}/ok/{r}"]):
                pending.discard(r)
            elif store.check([f"{ROOT}/want/{r}"]):
                token = store.get(f"{ROOT}/want/{r}").decode()
                if answered.get(r) != token:
                    store.set(f"{ROOT}/answer/{token}", key)
                    answered[r] = token
        if pending:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"ranks {sorted(pending)} of {world_size} did not join the process group "
                    f"within {timeout}"
                )
            time.sleep(POLL_S)
    return key


def _init_process_group(backend: str) -> None:
    """``init_process_group(backend)`` from torchrun's env://, its keys under a fresh group name."""
    timeout = dist.default_pg_timeout  # the env:// store's own default (30 min)
    store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
    key = group_key(store, rank, world_size, timeout)
    store = dist.PrefixStore(f"{ROOT}/{key}/pg", store)
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
