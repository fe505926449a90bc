"""Training across processes and nodes on this machine's CPUs: ``torchrun`` with two launchers
(two "nodes", c10d rendezvous on 127.0.0.1), an elastic restart after a worker is SIGKILLed, and
``--sync-bn``. Tiny: resnet18 at 32 px, an ImageFolder tree of six photos, 12 steps."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nsneg_testing import SMALL_METHOD, SMALL_RUN, make_tree

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
LAUNCH_TIMEOUT_S = 300
EPOCHS, STEPS_PER_EPOCH = 2, 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("images"), n_per_class=3, bad=False) / "train"


def train_args(tree: Path, out: Path) -> list[str]:
    return [
        "-m", "nsneg.trainer.cli", "--negatives", str(tree), "--negatives-kind", "patch",
        "--arch", "resnet18", "--image-size", "32", "--batch-size", "4", "--moco-k", "16",
        "--workers", "0", "--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS_PER_EPOCH),
        "--log-every", "1", "--out", str(out),
    ]  # fmt: skip


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def final_state(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] == EPOCHS * STEPS_PER_EPOCH
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


@pytest.fixture(scope="module")
def one_node_run(tree, tmp_path_factory):
    """``torchrun --standalone --nproc-per-node 2``: the reference."""
    out = tmp_path_factory.mktemp("one-node") / "run"
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node", "2", *train_args(tree, out)]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return final_state(out)


def test_two_launchers_train_to_the_weights_of_one_node_with_two_processes(
    tree, tmp_path, one_node_run
):
    out = tmp_path / "run"
    port = free_port()
    launchers = [
        subprocess.Popen(
            [
                *TORCHRUN,
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                f"two-nodes-{port}",
                "--rdzv-conf",
                f"is_host={int(host)}",
                *train_args(tree, out),
            ],  # fmt: skip
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for host in (True, False)
    ]
    try:
        results = [p.communicate(timeout=LAUNCH_TIMEOUT_S) for p in launchers]
    finally:
        for p in launchers:
            p.kill()
    for p, (_, stderr) in zip(launchers, results):
        assert p.returncode == 0, stderr[-3000:]
    assert_same_weights(final_state(out), one_node_run)


def worker_pids(launcher: int) -> list[int]:
    """The launcher's worker processes (its children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == launcher:
                    pids.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return pids


def _launch_and_kill_a_worker(out: Path, tree) -> tuple[int, str, str]:
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node", "2", "--max-restarts", "1"]
    launcher = subprocess.Popen(
        [*cmd, *train_args(tree, out)],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while True:  # the first epoch's checkpoint is written: kill a worker in the second epoch
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
            log = out / "log.jsonl"
            if log.exists() and '"epoch_end": true' in log.read_text():
                break
            time.sleep(0.1)
        victim = max(worker_pids(launcher.pid))
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = launcher.communicate(timeout=LAUNCH_TIMEOUT_S)
    finally:
        launcher.kill()
    return launcher.returncode, stdout, stderr


def test_a_worker_killed_mid_epoch_is_restarted_and_the_run_resumes_by_itself(
    tree, tmp_path, one_node_run
):
    out = tmp_path / "run"
    returncode, stdout, stderr = _launch_and_kill_a_worker(out, tree)
    assert returncode == 0, stderr[-3000:]
    assert "torchrun restart 1: resuming from" in stdout, stdout
    state = final_state(out)
    assert state["epoch"] == EPOCHS
    assert_same_weights(
        state, one_node_run
    )  # resumed from an epoch's end: exactly as uninterrupted


def _sync_bn_worker(rank: int, port: int, tree: str, out: str, method: str, device: str) -> None:
    """Two ranks (gloo: both may share one GPU) train with and without --sync-bn; each saves its
    BatchNorm running means, or the error --sync-bn met."""
    import torch.distributed as dist

    from nsneg.trainer.train import TrainConfig, Trainer

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2"
    )
    dist.init_process_group("gloo", rank=rank, world_size=2)
    means: dict = {}
    for sync in (False, True):
        settings = dict(SMALL_RUN, **SMALL_METHOD[method], epochs=1, steps_per_epoch=2)
        config = TrainConfig(
            negatives=tree, out=f"{out}/{sync}", negatives_kind="patch", sync_bn=sync, **settings
        )
        try:
            trainer = Trainer(config, device=device, show_progress=False)
        except ValueError as e:
            means[sync] = str(e)
            continue
        norms = [
            m
            for m in trainer.model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]
        assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) == sync for m in norms)
        trainer.fit()
        means[sync] = torch.cat([m.running_mean for m in norms]).cpu()
    torch.save(means, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def sync_bn_run(tmp_path: Path, tree: Path, method: str, device: str) -> tuple[dict, dict]:
    import torch.multiprocessing as mp

    args = (free_port(), str(tree), str(tmp_path), method, device)
    mp.spawn(_sync_bn_worker, args=args, nprocs=2, join=True)
    return tuple(torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's SyncBatchNorm runs on GPUs only")
@pytest.mark.parametrize("method", ["byol", "simclr"])
def test_sync_bn_gives_every_process_the_global_batch_statistics(tree, tmp_path, method):
    r0, r1 = sync_bn_run(tmp_path, tree, method, "cuda:0")
    assert not torch.equal(r0[False], r1[False])  # each process's own batch: different statistics
    assert torch.equal(r0[True], r1[True])  # one global batch, reduced once for all


def test_sync_bn_on_cpu_processes_is_a_clear_error_and_plain_bn_trains(tree, tmp_path):
    r0, r1 = sync_bn_run(tmp_path, tree, "simclr", "cpu")
    assert not torch.equal(r0[False], r1[False])
    assert (
        r0[True]
        == r1[True]
        == "--sync-bn needs GPU processes: torch's SyncBatchNorm has no CPU path"
    )


def test_sync_bn_is_refused_for_moco(tree, tmp_path):
    from nsneg.trainer.train import TrainConfig, Trainer

    config = TrainConfig(
        negatives=str(tree), out=str(tmp_path), negatives_kind="patch", sync_bn=True, **SMALL_RUN
    )
    with pytest.raises(ValueError, match="--sync-bn is for byol and simclr"):
        Trainer(config, device="cpu", show_progress=False)
