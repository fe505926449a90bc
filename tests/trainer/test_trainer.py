"""MoCo v2 + non-semantic negatives: the formula, the augmentation contract, the queue,
exact resume, DDP epoch lengths, and bad input."""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pipeline import contract, files, job
from pipeline.sources import folder_listing
from tests.helpers import TINY, make_tree
from trainer import checkpoint
from trainer.augment import augment, sample_params
from trainer.data import BadShards, apply_box, crop_box, resolve_urls, views
from trainer.moco import MoCo, SplitBatchNorm2d
from trainer.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("trainer")
    listing = folder_listing(make_tree(root / "tree", n_per_class=4, bad=False), "train")
    out = root / "shards"
    job.run(job.JobConfig(out=out, synthesis=TINY, shard_size=4), listing, show_progress=False)
    return out


def linear_moco(dim=8, K=12, alpha=2.0, T=0.2):
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, dim))  # noqa: E731
    return MoCo(make(), make(), dim=dim, K=K, m=0.99, T=T, alpha=alpha)


def test_logits_and_loss_match_the_papers_formula():
    model = linear_moco()
    im_q, im_k, im_t = torch.rand(4, 3, 4, 4), torch.rand(4, 3, 4, 4), torch.rand(4, 2, 3, 4, 4)
    queue = model.queue.clone()
    encode = lambda x: F.normalize(model.encoder_q(x), dim=1)  # noqa: E731  (key encoder == query encoder at start)
    q, k = encode(im_q), encode(im_k)
    t = [encode(im_t[:, n]) for n in range(2)]
    expected = torch.cat([(q * k).sum(1, keepdim=True), q @ queue] + [2.0 * (q * tn).sum(1, keepdim=True) for tn in t], 1) / 0.2
    logits, labels = model(im_q, im_k, im_t, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(logits, expected, atol=1e-6) and torch.equal(labels, torch.zeros(4, dtype=torch.long))
    manual = -torch.log(torch.exp(expected[:, 0]) / torch.exp(expected).sum(1)).mean()
    assert torch.allclose(F.cross_entropy(logits, labels), manual, atol=1e-6)


def test_queue_enqueues_keys_only_and_wraps():
    model = linear_moco(K=12)
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(4, 3, 4, 4) for _ in range(4)]
    for i, x in enumerate(batches):
        model(x, x, torch.rand(4, 1, 3, 4, 4), generator=g)
        k = F.normalize(model.encoder_k(x), dim=1)
        slot = (4 * i) % 12
        assert torch.allclose(model.queue[:, slot : slot + 4], k.T, atol=1e-6)  # keys, never the negatives
        assert int(model.queue_ptr) == (slot + 4) % 12


def test_split_batchnorm_normalises_each_sub_batch_separately():
    bn = SplitBatchNorm2d(3, num_splits=2).train()
    x = torch.randn(8, 3, 5, 5)
    x[1::2] = 10 + 5 * x[1::2]  # sub-batch b holds samples b, b + splits, ... (strided, as MoCo's demo)
    y = bn(x)
    for half in (y[0::2], y[1::2]):
        assert half.mean().abs() < 1e-5 and (half.var(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3


def test_texture_gets_exactly_its_querys_augmentation():
    x = torch.rand(6, 3, 32, 32)
    params = sample_params(6, torch.Generator().manual_seed(3))
    assert torch.equal(augment(x, params), augment(x.clone(), params))
    other = sample_params(6, torch.Generator().manual_seed(4))
    assert not torch.allclose(augment(x, params), augment(x, other))


def test_texture_gets_its_querys_crop_box():
    """Source == texture image: the loader's texture crop must equal the query crop pixel for pixel."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8))
    png = files.png_bytes(np.asarray(img))
    raw = {"__key__": "a", "texture.png": png, "source.img": png, "cls": b"0", "json": b"{}"}
    for q, k, t, skipped in views(iter([raw] * 5), 64, seed=1):
        assert torch.equal(q, t) and skipped == 0
    rng = __import__("random").Random(0)
    boxes = [crop_box(300, 200, rng) for _ in range(50)]
    assert all(0.2 - 1e-6 <= fraction <= 1 and 3 / 4 - 0.02 <= ratio <= 4 / 3 + 0.02 for fraction, ratio, _, _ in boxes)
    assert apply_box(img, boxes[0], 48).shape == (3, 48, 48)


def test_undecodable_samples_are_skipped_and_counted():
    good = {"__key__": "g", "texture.png": files.png_bytes(np.zeros((224, 224, 3), np.uint8)), "cls": b"0", "json": b"{}"}
    good["source.img"] = good["texture.png"]
    bad = {**good, "__key__": "b", "source.img": b"not an image"}
    counts = [s for *_, s in views(iter([good, bad, bad, good, bad]), 32, seed=0)]
    assert counts == [0, 2]


def test_tampered_shards_are_refused(shards, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    tar = sorted((copy / "train").glob("*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[1000] ^= 0xFF
    tar.write_bytes(bytes(data))
    with pytest.raises(BadShards, match="sha256 mismatch"):
        resolve_urls(str(copy))
    urls, samples = resolve_urls(str(shards))
    assert len(urls) == 2 and samples == 8


def config(shards, out, **overrides) -> TrainConfig:
    base = dict(negatives=str(shards), out=str(out), arch="resnet18", image_size=32, batch_size=4, moco_k=16,
                epochs=2, steps_per_epoch=2, workers=0, bn_splits=2, shuffle_buffer=8)
    return TrainConfig(**{**base, **overrides})


class Crash(Exception):
    pass


def test_resume_continues_exactly(shards, tmp_path):
    straight = Trainer(config(shards, tmp_path / "a"), device="cpu", show_progress=False)
    straight.fit()
    crashing = Trainer(config(shards, tmp_path / "b"), device="cpu", show_progress=False)
    save = crashing.save

    def save_then_crash(epoch_complete):  # the process dies right after the first end-of-epoch checkpoint
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
    assert all(torch.equal(a[name], b[name]) for name in a)  # weights, BN statistics, queue and its pointer
    assert not torch.equal(a["queue"], state["model"]["queue"])  # the resumed epoch did change the queue


def test_training_logs_and_moves_the_key_encoder_by_momentum(shards, tmp_path):
    trainer = Trainer(config(shards, tmp_path, epochs=2, steps_per_epoch=2, negatives_kind="texture"),
                      device="cpu", show_progress=False)
    q0 = [p.detach().clone() for p in trainer.model.encoder_q.parameters()]
    trainer.fit()
    lines = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    steps = [entry for entry in lines if "step" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3, 4] and sum("epoch_end" in e for e in lines) == 2
    assert all(np.isfinite(e["loss"]) and 0 <= e["acc"] <= 1 and e["img_per_s"] > 0 for e in steps)
    assert steps[0]["lr"] == pytest.approx(trainer.config.base_lr) and steps[-1]["lr"] < steps[0]["lr"]  # cosine
    moved = [not torch.equal(a, b) for a, b in zip(q0, trainer.model.encoder_q.parameters())]
    assert all(moved)
    # the key encoder lags: between the query encoder's start and end, never equal to the end
    for k, q_start, q_end in zip(trainer.model.encoder_k.parameters(), q0, trainer.model.encoder_q.parameters()):
        assert not torch.equal(k, q_end) and (k - q_start).abs().sum() <= (q_end - q_start).abs().sum() + 1e-6


def test_non_finite_loss_stops_with_last_checkpoint_intact(shards, tmp_path):
    good = Trainer(config(shards, tmp_path, epochs=1), device="cpu", show_progress=False)
    good.fit()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    bad = Trainer(config(shards, tmp_path, epochs=2, alpha=float("nan")), device="cpu", show_progress=False)
    bad.restore(tmp_path / "checkpoint.pt")
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        bad.fit()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_sigterm_writes_a_checkpoint_before_exit(shards, tmp_path):
    cmd = [sys.executable, "-m", "trainer.train", "--negatives", str(shards), "--out", str(tmp_path), "--arch", "resnet18",
           "--image-size", "32", "--batch-size", "4", "--moco-k", "16", "--epochs", "50", "--steps-per-epoch", "50",
           "--workers", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "log.jsonl").exists():
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    state = checkpoint.load(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 0 and state["step"] >= 1 and "resume with --resume" in out


def _ddp_worker(rank: int, world: int, port: int, shards: str, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    trainer = Trainer(config(shards, out, batch_size=4, steps_per_epoch=3, epochs=2), device="cpu", show_progress=False)
    steps = []
    original = trainer.train_step

    def counting(batch, generator):
        steps.append(trainer.epoch)
        return original(batch, generator)

    trainer.train_step = counting
    trainer.fit()
    weights = torch.cat([p.detach().flatten() for p in trainer.model.encoder_q.parameters()])
    torch.save({"steps": torch.tensor(steps), "weights": weights, "queue": trainer.model.queue}, f"{out}/rank{rank}.pt")
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
