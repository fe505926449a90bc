"""Training: exact resume, logging, momentum, non-finite loss, DDP, the accelerated paths on CPU
(SIGTERM is tested through the command, in test_train_cli.py)."""

import json
import os
import signal

import numpy as np
import pytest
import torch

from nsneg.trainer import checkpoint
from nsneg.trainer.cli import over_ranks
from nsneg.trainer.config import TrainConfig, default_workers
from nsneg.trainer.methods import METHODS
from nsneg.trainer.train import Trainer
from nsneg_testing import SMALL_METHOD, SMALL_RUN


def config(shards, out, **overrides) -> TrainConfig:
    base = dict(
        SMALL_RUN,
        **SMALL_METHOD["moco"],
        epochs=2,
        steps_per_epoch=2,
        shuffle_buffer=8,
        log_every=1,
    )
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


def stop_after(trainer: Trainer, step: int) -> None:
    """``trainer`` gets SIGINT while its step ``step`` runs (as a user's Ctrl-C would)."""
    original = trainer.train_step

    def step_then_signal(batch, generator):
        out = original(batch, generator)
        if trainer.step == step:
            trainer._request_stop(signal.SIGINT, None)
        return out

    trainer.train_step = step_then_signal


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_stop_mid_epoch_resumes_exactly(shards, tmp_path, method, capfd):
    """Stopped at epoch 2 step 1 and resumed: the same weights, target or queue, optimiser state,
    schedule and step count as the run that was never stopped."""
    settings = dict(SMALL_METHOD[method], epochs=2, steps_per_epoch=3)
    straight = Trainer(
        config(shards, tmp_path / "a", **settings), device="cpu", show_progress=False
    )
    straight.fit()
    stopping = Trainer(
        config(shards, tmp_path / "b", **settings), device="cpu", show_progress=False
    )
    stop_after(stopping, 4)
    with pytest.raises(SystemExit) as stopped:
        stopping.fit()
    assert stopped.value.code == 128 + signal.SIGINT
    assert "stopping after this step, writing checkpoint" in capfd.readouterr().err
    state = checkpoint.load(tmp_path / "b" / "checkpoint.pt")
    assert state["epoch"] == 1 and state["step"] == 4 and state["method"] == method
    resumed = Trainer(config(shards, tmp_path / "b", **settings), device="cpu", show_progress=False)
    resumed.restore(tmp_path / "b" / "checkpoint.pt")
    resumed.fit()
    assert resumed.step == straight.step == 6
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)  # incl. target network / queue, BN
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert opt_a.keys() == opt_b.keys() and all(
        torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in opt_a[i]
    )
    log = lambda run: [json.loads(line) for line in open(tmp_path / run / "log.jsonl")]  # noqa: E731
    steps = [(e["step"], e["lr"], e["loss"]) for e in log("b") if "step" in e]
    assert steps == [(e["step"], e["lr"], e["loss"]) for e in log("a") if "step" in e]
    ends = lambda run: [e["loss"] for e in log(run) if "epoch_end" in e]  # noqa: E731
    assert ends("b") == pytest.approx(ends("a"), rel=1e-6)  # the resumed epoch's mean covers it all


@pytest.mark.slow
@pytest.mark.parametrize("method", ["byol", "simclr"])
def test_byol_and_simclr_train_and_their_checkpoint_loads_as_a_backbone(shards, tmp_path, method):
    trainer = Trainer(
        config(shards, tmp_path, **SMALL_METHOD[method], epochs=1, steps_per_epoch=2),
        device="cpu",
        show_progress=False,
    )
    before = [p.detach().clone() for p in trainer.model.backbone.parameters()]
    metrics = trainer.fit()
    assert np.isfinite(metrics["loss"]) and {"acc", "ns_outrank"} <= metrics.keys()
    assert all(not torch.equal(a, b) for a, b in zip(before, trainer.model.backbone.parameters()))
    backbone, stored = checkpoint.load_backbone(tmp_path / "checkpoint.pt")
    assert stored["method"] == method
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(backbone(x), trainer.model.backbone.eval()(x), atol=1e-6)


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
    assert all(0 <= e["ns_outrank"] <= 1 for e in steps)  # the rate an NS negative beats the key
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


@pytest.mark.parametrize(
    "method,log_every", [("moco", 1), ("moco", 100), ("byol", 100), ("simclr", 100)]
)
def test_non_finite_loss_stops_with_last_checkpoint_intact(shards, tmp_path, method, log_every):
    small = SMALL_METHOD[method]
    good = Trainer(config(shards, tmp_path, epochs=1, **small), device="cpu", show_progress=False)
    good.fit()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    bad = Trainer(
        config(shards, tmp_path, epochs=2, alpha=float("nan"), log_every=log_every, **small),
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
        Trainer(config(shards, tmp_path, method_settings=dict(k=18)), device="cpu")
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


@pytest.mark.parametrize("method", ["byol", "simclr"])
def test_channels_last_and_bf16_path_trains_byol_and_simclr_on_cpu(shards, tmp_path, method):
    trainer = Trainer(
        config(shards, tmp_path, **SMALL_METHOD[method], epochs=1, channels_last=True, bf16=True),
        device="cpu",
        show_progress=False,
    )
    seen = []
    trainer.model.backbone.layer1.register_forward_hook(lambda _m, _a, out: seen.append(out))
    metrics = trainer.fit()
    assert np.isfinite(metrics["loss"]) and trainer.step == 2 and seen
    assert all(
        o.dtype == torch.bfloat16 and o.is_contiguous(memory_format=torch.channels_last)
        for o in seen
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_compile_traces_the_methods_networks_and_trains_on_cpu(shards, tmp_path, method):
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
            **SMALL_METHOD[method],
        ),
        device="cpu",
        show_progress=False,
    )
    metrics = trainer.fit()
    assert np.isfinite(metrics["loss"]) and trainer.step == 1
    assert counters["stats"]["unique_graphs"] - before >= len(trainer.model.compiled_modules())


def _ddp_worker(rank: int, world: int, port: int, shards: str, out: str, method: str) -> None:
    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    dist.init_process_group("gloo", rank=rank, world_size=world)
    trainer = Trainer(
        config(shards, out, batch_size=4, steps_per_epoch=3, epochs=2, **SMALL_METHOD[method]),
        device="cpu",
        show_progress=False,
    )
    steps = []
    original = trainer.train_step

    def counting(batch, generator):
        steps.append(trainer.epoch)
        return original(batch, generator)

    trainer.train_step = counting
    metrics = trainer.fit()
    weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])  # incl. target
    queue = getattr(trainer.model, "queue", torch.zeros(1))
    summary = over_ranks(metrics["loss"], rank + 1, trainer.device)  # rank r "skipped" r + 1
    torch.save(
        {
            "steps": torch.tensor(steps),
            "weights": weights,
            "queue": queue,
            "loss": torch.tensor(metrics["loss"], dtype=torch.float64),
            "summary": torch.tensor(summary, dtype=torch.float64),
        },
        f"{out}/rank{rank}.pt",
    )
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_ddp_two_cpu_ranks_have_equal_epochs_and_stay_in_sync(shards, tmp_path, method):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(shards), str(tmp_path), method), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["steps"].tolist() == r1["steps"].tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(r0["weights"], r1["weights"]) and torch.equal(r0["queue"], r1["queue"])
    # The done line's numbers: the ranks' losses averaged, their skips summed, the same on both.
    mean = (r0["loss"].item() + r1["loss"].item()) / 2
    assert r0["summary"].tolist() == r1["summary"].tolist() == pytest.approx([mean, 3.0])


def test_patch_negatives_train_from_an_image_folder_and_texture_kinds_refuse_it(
    texture_shards, tmp_path
):
    """The baseline and +Patch need no texture: a plain ImageFolder tree is their training data."""
    folder = texture_shards[1] / "train"
    with pytest.raises(ValueError, match="needs textures, and .* is an image folder without them"):
        Trainer(config(folder, tmp_path, negatives_kind="texture+patch"), device="cpu")
    trainer = Trainer(
        config(folder, tmp_path, negatives_kind="patch", epochs=1, steps_per_epoch=None),
        device="cpu",
        show_progress=False,
    )
    assert trainer.steps_per_epoch == 1  # 6 images // batch 4
    metrics = trainer.fit()
    assert np.isfinite(metrics["loss"]) and 0 <= metrics["ns_outrank"] <= 1


def test_loader_workers_default_to_at_most_the_cpus(monkeypatch):
    """4 on a big machine, no more than the CPUs this process may use, shared by torchrun's
    processes of the node."""
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)), raising=False)
    assert default_workers() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert default_workers() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert default_workers() == 2
    assert TrainConfig().workers <= len(os.sched_getaffinity(0))


def test_torchruns_forwarded_signal_is_the_same_stop(shards, tmp_path, monkeypatch):
    """Under torchrun a Ctrl-C reaches a worker twice (from the terminal, then from torchrun): the
    second is the same stop; without torchrun a second signal stops at once."""
    trainer = Trainer(config(shards, tmp_path / "a"), device="cpu", show_progress=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    trainer._request_stop(signal.SIGINT, None)
    trainer._request_stop(signal.SIGINT, None)
    assert trainer.stop_signal == signal.SIGINT
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    with pytest.raises(KeyboardInterrupt):
        trainer._request_stop(signal.SIGINT, None)


@pytest.mark.slow
def test_a_signal_after_an_epochs_last_step_still_says_how_to_resume(shards, tmp_path, capsys):
    """A signal that comes once the epoch's last step was checked (while its end is written)
    stops at the epoch's end, with its checkpoint and the resume line; on the run's last epoch the
    run is complete and says so."""
    trainer = Trainer(config(shards, tmp_path / "a"), device="cpu", show_progress=False)
    original, calls = trainer.check_finite, []

    def signal_at_epoch_end(loss):
        calls.append(trainer.step)
        if calls.count(trainer.step) == 2:  # the epoch's end, after its last step's own check
            trainer._request_stop(signal.SIGINT, None)
        return original(loss)

    trainer.check_finite = signal_at_epoch_end
    with pytest.raises(SystemExit) as stopped:
        trainer.fit()
    assert stopped.value.code == 128 + signal.SIGINT
    path = tmp_path / "a" / "checkpoint.pt"
    assert f"stopped by signal 2 at step 2; checkpoint {path} (resume with --resume {path})" in (
        capsys.readouterr().out
    )
    state = checkpoint.load(path)
    assert (state["epoch"], state["step"]) == (1, 2)
    resumed = Trainer(config(shards, tmp_path / "a"), device="cpu", show_progress=False)
    resumed.restore(path)
    resumed.check_finite = lambda loss: (calls.append(resumed.step), original(loss))[1]
    calls.clear()

    def last_epoch_end(loss):
        calls.append(resumed.step)
        if calls.count(resumed.step) == 2 and resumed.step == 4:
            resumed._request_stop(signal.SIGINT, None)

    resumed.check_finite = last_epoch_end
    resumed.fit()  # the run's last step: complete, no exit
    assert "holds the complete run" in capsys.readouterr().out
    assert checkpoint.load(path)["step"] == 4
