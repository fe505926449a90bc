"""MoCo v2 pre-training with non-semantic negatives, CPU to multi-node: ``TrainConfig`` and ``Trainer``.

The command line (``nsneg-train``, reruns and resume rules) is ``nsneg.trainer.cli``.

Every random choice of epoch ``e`` derives from (``--seed``, ``e``, rank), so a run
resumed from an end-of-epoch checkpoint continues exactly as if never stopped.

A step never waits for the device: the loss and accuracy stay on it and are read (and
checked for being finite) every ``log_every`` steps and before every checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nsneg.trainer import checkpoint
from nsneg.trainer.augment import augment, sample_params
from nsneg.trainer.data import BadShards, make_loader, resolve_urls
from nsneg.trainer.moco import MoCo, build_backbone
from nsneg.trainer.negatives import patch_negatives

KINDS = ("none", "texture", "patch", "texture+patch")


@dataclass
class TrainConfig:
    negatives: str
    out: str
    negatives_kind: str = "texture+patch"
    num_nonsem: int = 1
    alpha: float = 2.0
    patch_size_range: tuple[int, int] = (16, 72)
    arch: str = "resnet50"
    image_size: int = 224
    small_images: bool = False
    batch_size: int = 512  # global, over all ranks
    lr: float | None = None  # default 0.8 * batch_size / 512
    epochs: int = 200
    steps_per_epoch: int | None = None
    moco_dim: int = 128
    moco_k: int = 16384
    moco_m: float = 0.99
    moco_t: float = 0.2
    bn_splits: int = 8
    weight_decay: float = 1e-4
    workers: int = 4
    shuffle_buffer: int = 1000
    checkpoint_every: int = 1
    max_skip_fraction: float = 0.01
    compile: bool = False
    compile_backend: str = (
        "inductor"  # torch.compile backend ("aot_eager": traced, no code generation)
    )
    channels_last: bool | None = None  # default: on CUDA
    bf16: bool | None = None  # bf16 autocast; default: on CUDA
    log_every: int = 10  # steps between reads of the loss (each read waits for the device)
    seed: int = 0
    manifest_dirs: tuple[str, ...] = ()

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else 0.8 * self.batch_size / 512


class StopRequested(Exception):
    pass


class MetricsLog:
    """Metrics as JSON lines in ``OUT/log.jsonl``; also TensorBoard where it is installed."""

    def __init__(self, out: Path):
        self.file = open(out / "log.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            self.tensorboard = None

    def write(self, record: dict[str, Any], tag: str, step: int) -> None:
        self.file.write(json.dumps(record) + "\n")
        if self.tensorboard:
            for name, value in record.items():
                if isinstance(value, float):
                    self.tensorboard.add_scalar(f"{tag}/{name}", value, step)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        if self.tensorboard:
            self.tensorboard.close()


class Trainer:
    def __init__(self, config: TrainConfig, device: str | None = None, show_progress: bool = True):
        self.config = c = config
        if c.negatives_kind not in KINDS:
            raise ValueError(f"--negatives-kind must be one of {KINDS}")
        if c.log_every < 1:
            raise ValueError(f"--log-every must be >= 1, got {c.log_every}")
        self.rank, self.world = (
            (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        )
        if c.batch_size % self.world:
            raise ValueError(
                f"--batch-size {c.batch_size} is not divisible by {self.world} processes"
            )
        if c.moco_k % c.batch_size:
            raise ValueError(
                f"--moco-k {c.moco_k} must be a multiple of --batch-size {c.batch_size}"
            )
        self.per_rank = c.batch_size // self.world
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cuda = self.device.type == "cuda"
        self.channels_last = self.cuda if c.channels_last is None else c.channels_last
        self.bf16 = self.cuda if c.bf16 is None else c.bf16
        self.show_progress = show_progress and self.rank == 0
        self.urls, samples = resolve_urls(c.negatives, manifest_dirs=tuple(c.manifest_dirs))
        self.steps_per_epoch = c.steps_per_epoch or (
            max(1, samples // c.batch_size) if samples else None
        )
        if not self.steps_per_epoch:
            raise ValueError(
                "give --steps-per-epoch: the number of samples behind these urls is unknown"
            )
        torch.manual_seed(c.seed)  # same initial weights and queue on every rank
        bn_splits = 1 if self.world > 1 else math.gcd(self.per_rank, c.bn_splits)
        encoders = [build_backbone(c.arch, c.moco_dim, bn_splits, c.small_images) for _ in range(2)]
        self.model = MoCo(
            *encoders, dim=c.moco_dim, K=c.moco_k, m=c.moco_m, T=c.moco_t, alpha=c.alpha
        ).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(
            self.model.encoder_q.parameters(),
            lr=c.base_lr,
            momentum=0.9,
            weight_decay=c.weight_decay,
        )
        self.forward = self.model
        if self.world > 1:
            self.forward = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.cuda else None
            )
        if c.compile:  # both encoders; each step's first call compiles (minutes for a resnet50)
            self.model.encoder_q.compile(backend=c.compile_backend)
            self.model.encoder_k.compile(backend=c.compile_backend)
        self.epoch, self.step, self.samples_seen, self.skipped = 0, 0, 0, 0
        self.stop_signal: int | None = None
        self.out = Path(c.out)
        self.checkpoint_path = self.out / "checkpoint.pt"

    # ------------------------------------------------------------------ state
    def state(self, epoch_complete: bool) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch + 1 if epoch_complete else self.epoch,  # the epoch to run next
            "step": self.step,
            "samples_seen": self.samples_seen,
            "skipped": self.skipped,
            "config": {
                **asdict(self.config),
                "patch_size_range": list(self.config.patch_size_range),
                "manifest_dirs": list(self.config.manifest_dirs),
            },
        }

    def save(self, epoch_complete: bool) -> None:
        if self.rank == 0:
            checkpoint.save(self.checkpoint_path, self.state(epoch_complete))

    def restore(self, path: Path) -> None:
        state = checkpoint.load(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.samples_seen, self.skipped = state["samples_seen"], state["skipped"]

    # ------------------------------------------------------------------ one step
    def nonsemantic(
        self, im_q: torch.Tensor, t: torch.Tensor, params_q, generator
    ) -> torch.Tensor | None:
        """[B, N, 3, H, W]: the texture with its query's augmentation, then N patch-shuffled query views."""
        c, negatives = self.config, []
        if "texture" in c.negatives_kind:
            negatives.append(augment(t, params_q).unsqueeze(1))
        if "patch" in c.negatives_kind:
            negatives.append(
                patch_negatives(im_q, c.num_nonsem, tuple(c.patch_size_range), generator)
            )
        return torch.cat(negatives, dim=1) if negatives else None

    def lr_at(self, step: int) -> float:
        total = self.config.epochs * self.steps_per_epoch
        return self.config.base_lr * 0.5 * (1 + math.cos(math.pi * step / total))

    def train_step(self, batch, generator: torch.Generator) -> dict[str, torch.Tensor | float]:
        """One optimisation step, without waiting for the device: loss and acc come back as device tensors."""
        q, k, t, skipped = batch
        to = lambda x: x.to(self.device, non_blocking=True).float().div_(255)  # noqa: E731
        q, k, t = to(q), to(k), to(t)
        params_q = sample_params(q.shape[0], generator)
        im_q, im_k = augment(q, params_q), augment(k, sample_params(k.shape[0], generator))
        im_t = self.nonsemantic(im_q, t, params_q, generator)
        if self.channels_last:
            im_q, im_k = (x.contiguous(memory_format=torch.channels_last) for x in (im_q, im_k))
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits, labels = self.forward(im_q, im_k, im_t, generator=generator)
            loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        self.samples_seen += q.shape[0]
        self.skipped += int(skipped.sum())  # counted by the loader, on the CPU
        if self.skipped > self.config.max_skip_fraction * (self.samples_seen + self.skipped):
            raise BadShards(
                f"{self.skipped} undecodable samples out of {self.samples_seen + self.skipped}: "
                f"above --max-skip-fraction {self.config.max_skip_fraction} (each was logged with its "
                "shard and key as it was skipped)"
            )
        acc = (logits.detach().argmax(dim=1) == 0).float().mean()
        return {"loss": loss.detach(), "acc": acc, "lr": lr}

    def check_finite(self, loss: float) -> None:
        """Stop on a non-finite loss, before any checkpoint could hold the diverged weights."""
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss} at step {self.step}; stopping. The last good checkpoint "
                f"({self.checkpoint_path}) is intact: resume from it with a lower --lr."
            )

    # ------------------------------------------------------------------ loop
    def loader(self, seed: int, steps: int):
        """This rank's batches for one epoch: a function of ``seed`` alone, so epochs repeat on resume."""
        c = self.config
        return make_loader(
            self.urls,
            batch_size=self.per_rank,
            image_size=c.image_size,
            steps=steps,
            workers=c.workers,
            seed=seed,
            shuffle_buffer=c.shuffle_buffer,
            pin_memory=self.cuda,
        )

    def _request_stop(self, signum, _frame) -> None:
        self.stop_signal = signum

    def fit(self) -> dict[str, float]:
        from tqdm import tqdm

        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        previous = {
            s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)
        }
        log = MetricsLog(self.out) if self.rank == 0 else None
        metrics: dict[str, float] = {}
        try:
            while self.epoch < c.epochs:
                epoch_seed = c.seed * 1_000_003 + self.epoch
                generator = torch.Generator().manual_seed(epoch_seed * 1009 + self.rank)
                loader = self.loader(epoch_seed, self.steps_per_epoch)
                bar = tqdm(
                    total=self.steps_per_epoch,
                    desc=f"epoch {self.epoch} [0-{c.epochs - 1}]",  # numbered from 0, as log.jsonl
                    unit="step",
                    disable=not self.show_progress,
                )
                start, steps = time.time(), 0
                loss_sum = acc_sum = torch.zeros((), device=self.device)
                for batch in loader:
                    step = self.train_step(batch, generator)
                    loss_sum, acc_sum, steps = (
                        loss_sum + step["loss"],
                        acc_sum + step["acc"],
                        steps + 1,
                    )
                    if self.step % c.log_every == 0 or steps == self.steps_per_epoch:
                        metrics = {
                            "loss": step["loss"].item(),
                            "acc": step["acc"].item(),
                            "lr": step["lr"],
                        }
                        self.check_finite(metrics["loss"])
                        rate = steps * c.batch_size / (time.time() - start)
                        bar.set_postfix(
                            loss=f"{metrics['loss']:.3f}",
                            acc=f"{metrics['acc']:.2f}",
                            img_s=f"{rate:.0f}",
                        )
                        if log:
                            log.write(
                                {
                                    "epoch": self.epoch,
                                    "step": self.step,
                                    **metrics,
                                    "img_per_s": rate,
                                },
                                "step",
                                self.step,
                            )
                    bar.update()
                    if self.stop_signal is not None:
                        raise StopRequested
                bar.close()
                metrics = {
                    "epoch": self.epoch,
                    "loss": (loss_sum / steps).item(),
                    "acc": (acc_sum / steps).item(),
                    "img_per_s": steps * c.batch_size / (time.time() - start),
                }
                self.check_finite(metrics["loss"])
                if log:
                    log.write({"epoch_end": True, **metrics}, "epoch", self.epoch)
                    log.flush()
                done = self.epoch + 1 == c.epochs
                if done or (self.epoch + 1) % c.checkpoint_every == 0:
                    self.save(epoch_complete=True)
                self.epoch += 1
        except StopRequested:
            self.save(epoch_complete=False)  # resuming repeats this epoch from its start
            if self.rank == 0:
                print(
                    f"\nstopped by signal {self.stop_signal}; checkpoint {self.checkpoint_path} "
                    f"(resume with --resume {self.checkpoint_path})"
                )
            raise SystemExit(128 + int(self.stop_signal)) from None
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if log:
                log.close()
        return metrics


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
