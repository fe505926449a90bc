"""Training: exact resume, logging, momentum, non-finite loss, DDP, the accelerated paths on CPU
(SIGTERM is tested through the command, in test_train_cli.py)."""

import json
import os

import numpy as np
import pytest
import torch

from nsneg.trainer import checkpoint
from nsneg.trainer.train import TrainConfig, Trainer
from nsneg_testing import SMALL_RUN


def config(shards, out, **overrides) -> TrainConfig:
    base = dict(SMALL_RUN, epochs=2, steps_per_epoch=2, shuffle_buffer=8, log_every=1)
    return TrainConfig(negatives=str(shards), out=str(out), **{**base, **overrides})


class Crash(Exception):
    pass


def test_resume_continues_exactly(shards, tmp_path):
    straight = Trainer(config(shards, tmp_path / "a"), device="cpu", show_progress=False)
    straight.fit()
    crashing = Trainer(config(shards, tmp_path / "b"), device="cpu", show_progress=False)
    save = crashing.save

    def save_then_crash(
        epoch_complete,
    ):  # the process dies right after the first end-of-epoch checkpoint
        save(epoch_complete)
        raise Crash

    crashing.save = save_then_crash
    with pytest.raises(Crash):
        crashing.fit()
    state = checkpoint.load(tmp_path / "b" / "checkpoint.pt")
    assert state["epoch"] == 1 and state["step"] == 2
    resumed = Trainer(config(shards, tmp_path / "b"), device="cpu", show_progress=False)
    resumed.restore(tmp_path / "b" / "checkpoint.pt")
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(
        torch.equal(a[name], b[name]) for name in a
    )  # weights, BN statistics, queue and its pointer
    assert not torch.equal(
        a["queue"], state["model"]["queue"]
    )  # the resumed epoch did change the queue


def test_training_logs_and_moves_the_key_encoder_by_momentum(shards, tmp_path):
    trainer = Trainer(
        config(shards, tmp_path, epochs=2, steps_per_epoch=2, negatives_kind="texture"),
        device="cpu",
        show_progress=False,
    )
    q0 = [p.detach().clone() for p in trainer.model.encoder_q.parameters()]
    trainer.fit()
    lines = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    steps = [entry for entry in lines if "step" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3, 4] and sum(
        "epoch_end" in e for e in lines
    ) == 2
    assert all(np.isfinite(e["loss"]) and 0 <= e["acc"] <= 1 and e["img_per_s"] > 0 for e in steps)
    assert (
        steps[0]["lr"] == pytest.approx(trainer.config.base_lr) and steps[-1]["lr"] < steps[0]["lr"]
    )  # cosine
    moved = [not torch.equal(a, b) for a, b in zip(q0, trainer.model.encoder_q.parameters())]
    assert all(moved)
    # the key encoder lags: between the query encoder's start and end, never equal to the end
    for k, q_start, q_end in zip(
        trainer.model.encoder_k.parameters(), q0, trainer.model.encoder_q.parameters()
    ):
        assert (
            not torch.equal(k, q_end)
            and (k - q_start).abs().sum() <= (q_end - q_start).abs().sum() + 1e-6
        )


def test_loss_is_read_every_log_every_steps_and_at_each_epoch_end(shards, tmp_path):
    trainer = Trainer(
        config(shards, tmp_path, epochs=2, steps_per_epoch=3, log_every=2),
        device="cpu",
        show_progress=False,
    )
    trainer.fit()
    lines = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [e["step"] for e in lines if "step" in e] == [
        2,
        3,
        4,
        6,
    ]  # every 2nd step, and each epoch's last
    ends = [e for e in lines if "epoch_end" in e]
    assert len(ends) == 2 and all(np.isfinite(e["loss"]) for e in ends)


@pytest.mark.parametrize("log_every", [1, 100])
def test_non_finite_loss_stops_with_last_checkpoint_intact(shards, tmp_path, log_every):
    good = Trainer(config(shards, tmp_path, epochs=1), device="cpu", show_progress=False)
    good.fit()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    bad = Trainer(
        config(shards, tmp_path, epochs=2, alpha=float("nan"), log_every=log_every),
        device="cpu",
        show_progress=False,
    )
    bad.restore(tmp_path / "checkpoint.pt")
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        bad.fit()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_bad_settings_are_value_errors_for_library_users(shards, tmp_path):
    with pytest.raises(ValueError, match="--negatives-kind must be one of"):
        Trainer(config(shards, tmp_path, negatives_kind="shape"), device="cpu")
    with pytest.raises(ValueError, match="--moco-k 18 must be a multiple of --batch-size 4"):
        Trainer(config(shards, tmp_path, moco_k=18), device="cpu")
    with pytest.raises(ValueError, match="--log-every"):
        Trainer(config(shards, tmp_path, log_every=0), device="cpu")


def test_channels_last_and_bf16_path_trains_on_cpu(shards, tmp_path):
    """The GPU defaults (channels_last weights and views, bf16 autocast) selected explicitly on the CPU."""
    trainer = Trainer(
        config(shards, tmp_path, epochs=1, channels_last=True, bf16=True),
        device="cpu",
        show_progress=False,
    )
    conv = trainer.model.encoder_q.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    seen = []
    trainer.model.encoder_k.layer1.register_forward_hook(lambda _m, _a, out: seen.append(out))
    metrics = trainer.fit()
    assert np.isfinite(metrics["loss"]) and trainer.step == 2
    assert all(
        o.dtype == torch.bfloat16 and o.is_contiguous(memory_format=torch.channels_last)
        for o in seen
    )
    assert len(seen) == 2 * 3  # per step: the keys, the texture and the patch negatives


def test_compile_traces_both_encoders_and_trains_on_cpu(shards, tmp_path):
    """``--compile``'s path through TorchDynamo and AOTAutograd for both encoders, split BN included.

    The suite uses the ``aot_eager`` backend: inductor's code generation for even a tiny resnet18
    took 577 s on this 2-core machine under load (aot_eager: 56 s), too long for a test."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    trainer = Trainer(
        config(
            shards,
            tmp_path,
            epochs=1,
            steps_per_epoch=1,
            compile=True,
            compile_backend="aot_eager",
            negatives_kind="none",
        ),
        device="cpu",
        show_progress=False,
    )
    metrics = trainer.fit()
    assert np.isfinite(metrics["loss"]) and trainer.step == 1
    assert (
        counters["stats"]["unique_graphs"] - before >= 2
    )  # the query and the key encoder were compiled


def _ddp_worker(rank: int, world: int, port: int, shards: str, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    dist.init_process_group("gloo", rank=rank, world_size=world)
    trainer = Trainer(
        config(shards, out, batch_size=4, steps_per_epoch=3, epochs=2),
        device="cpu",
        show_progress=False,
    )
    steps = []
    original = trainer.train_step

    def counting(batch, generator):
        steps.append(trainer.epoch)
        return original(batch, generator)

    trainer.train_step = counting
    trainer.fit()
    weights = torch.cat([p.detach().flatten() for p in trainer.model.encoder_q.parameters()])
    torch.save(
        {"steps": torch.tensor(steps), "weights": weights, "queue": trainer.model.queue},
        f"{out}/rank{rank}.pt",
    )
    dist.destroy_process_group()


def test_ddp_two_cpu_ranks_have_equal_epochs_and_stay_in_sync(shards, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(shards), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["steps"].tolist() == r1["steps"].tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(r0["weights"], r1["weights"]) and torch.equal(r0["queue"], r1["queue"])
