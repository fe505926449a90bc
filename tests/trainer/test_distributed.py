"""``setup_distributed`` under torchrun's elastic agent: a restarted worker group meets through
the agent's store, which still holds the keys of the group before it.

The agent's store is played by a ``TCPStore`` this test serves (as the agent does: the workers
are its clients, ``TORCHELASTIC_USE_AGENT_STORE=True``). Restart 0: both ranks form a gloo group
and exit. Restart 1: rank 1 starts first and rank 0 only seconds later, the order in which a
stale address of the old rank 0 would be read and refused; and once more with the two ranks'
restart counts differing, as when one node's agent restarts after a failure and the other's
for the membership change."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from nsneg.trainer.distributed import ROOT, group_key

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


def _group(port: int, restarts: dict[int, int], delays: dict[int, float], results) -> list[tuple]:
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(rank, port, restarts[rank], delays[rank], results))
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


def test_the_handshake_names_each_group_afresh_and_reads_no_stale_keys():
    """Two ranks in threads on a real TCPStore; a stale request and answer of an earlier group
    are in the store before the second group."""
    import threading

    port = free_port()
    server = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    timeout = timedelta(seconds=30)

    def group() -> list[str]:
        keys = [None, None]

        def rank(r: int) -> None:
            client = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)
            keys[r] = group_key(client, r, 2, timeout)

        threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 0)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        return keys

    first = group()
    assert first[0] == first[1]
    assert server.check([f"{ROOT}/want/1"])  # the earlier group's request is still there
    second = group()
    assert second[0] == second[1] and second[0] != first[0]


def test_the_handshake_gives_up_with_the_missing_ranks_named():
    port = free_port()
    server = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    with pytest.raises(TimeoutError, match=r"ranks \[1, 2\] of 3"):
        group_key(server, 0, 3, timedelta(seconds=0.5))


def test_a_restarted_group_does_not_read_the_previous_groups_addresses():
    port = free_port()
    agent_store = dist.TCPStore(
        "127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60)
    )
    results = multiprocessing.get_context("spawn").Queue()
    try:
        first = _group(port, {0: 0, 1: 0}, {0: 0.0, 1: 0.0}, results)
        assert first == [(0, 0, "cpu", 3.0), (0, 1, "cpu", 3.0)]
        # the old group's keys are still in the agent's store; rank 0 of the new group comes late
        restarted = _group(port, {0: 1, 1: 1}, {0: 4.0, 1: 0.0}, results)
        assert restarted == [(1, 0, "cpu", 3.0), (1, 1, "cpu", 3.0)], restarted
        # the two nodes' agents counted differently
        mixed = _group(port, {0: 2, 1: 1}, {0: 2.0, 1: 0.0}, results)
        assert mixed == [(1, 1, "cpu", 3.0), (2, 0, "cpu", 3.0)], mixed
    finally:
        del agent_store


@pytest.mark.parametrize("restart", ["0", "3"])
def test_setup_is_a_no_op_outside_a_process_group(monkeypatch, restart):
    from nsneg.trainer.distributed import setup_distributed

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", restart)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert setup_distributed() is None
    assert not dist.is_initialized()
