"""``setup_distributed`` under torchrun's elastic agent: a restarted worker group meets through
the agent's store, which still holds the keys of the group before it.

The agent's store is played by a ``TCPStore`` this test serves (as the agent does: the workers
are its clients, ``TORCHELASTIC_USE_AGENT_STORE=True``). Restart 0: both ranks form a gloo group
and exit. Restart 1: rank 1 starts first and rank 0 only seconds later, the order in which a
stale address of the old rank 0 would be read and refused."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from nsneg.trainer.distributed import group_store_prefix

START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, restart: int, delay_s: float, results) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        TORCHELASTIC_USE_AGENT_STORE="True",
        TORCHELASTIC_RESTART_COUNT=str(restart),
        CUDA_VISIBLE_DEVICES="",
    )
    time.sleep(delay_s)
    import torch

    from nsneg.trainer.distributed import setup_distributed

    try:
        device = setup_distributed()
        total = torch.tensor([float(rank + 1)])
        dist.all_reduce(total)
        dist.destroy_process_group()
        results.put((restart, rank, device, total.item()))
    except Exception as e:  # reported to the test, not lost in a child's stderr
        results.put((restart, rank, "error", repr(e)))


def _group(port: int, restart: int, delays: dict[int, float], results) -> list[tuple]:
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(rank, port, restart, delays[rank], results))
        for rank in (0, 1)
    ]
    for p in procs:
        p.start()
    try:
        return sorted(results.get(timeout=START_TIMEOUT_S) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=START_TIMEOUT_S)
            if p.is_alive():  # a rank left waiting for a peer that failed
                p.kill()


def test_the_group_prefix_is_one_per_restart(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    first = group_store_prefix()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert group_store_prefix() != first
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    assert group_store_prefix() == first  # outside torchrun's agent: the first group's


def test_a_restarted_group_does_not_read_the_previous_groups_addresses():
    port = free_port()
    agent_store = dist.TCPStore(
        "127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60)
    )
    results = multiprocessing.get_context("spawn").Queue()
    try:
        first = _group(port, 0, {0: 0.0, 1: 0.0}, results)
        assert first == [(0, 0, "cpu", 3.0), (0, 1, "cpu", 3.0)]
        # the old group's keys are still in the agent's store; rank 0 of the new group comes late
        restarted = _group(port, 1, {0: 4.0, 1: 0.0}, results)
    finally:
        del agent_store
    assert restarted == [(1, 0, "cpu", 3.0), (1, 1, "cpu", 3.0)], restarted


@pytest.mark.parametrize("restart", ["0", "3"])
def test_setup_is_a_no_op_outside_a_process_group(monkeypatch, restart):
    from nsneg.trainer.distributed import setup_distributed

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", restart)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert setup_distributed() is None
    assert not dist.is_initialized()
