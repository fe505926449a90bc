"""Pre-training with non-semantic negatives (MoCo v2, BYOL, SimCLR), CPU to multi-node: the ``Trainer``.

The settings are ``nsneg.trainer.config``; the command line (``nsneg-train``, reruns and
resume rules) is ``nsneg.trainer.cli``; metrics go through ``nsneg.trainer.tracking``.

The method (``--method``: MoCo v2, BYOL, SimCLR; ``nsneg.trainer.methods``) is one module behind
the ``Method`` interface; loading, augmentation, the non-semantic negatives, the schedule,
checkpoints, resume, DDP and progress are the same for all.

Every random choice of epoch ``e`` derives from (``--seed``, ``e``, rank), and a checkpoint
written on a signal mid-epoch keeps every rank's generator and the epoch's position: a resumed
run, from an epoch's end or from any step, continues exactly as if never stopped.

A step never waits for the device: the loss and accuracy stay on it and are read (and
checked for being finite) every ``log_every`` steps and before every checkpoint.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nsneg.datasets_manifest.format.skip_log import check_fraction
from nsneg.trainer import checkpoint, elastic
from nsneg.trainer.augment import augment, sample_params
from nsneg.trainer.backbones import check_arch
from nsneg.trainer.config import KINDS, OPTIMIZERS, TrainConfig, to_dict, write_resolved
from nsneg.trainer.data import (
    image_folder,
    make_folder_loader,
    make_loader,
    resolve_urls,
)
from nsneg.trainer.data_identity import data_identity
from nsneg.trainer.methods.base import Method
from nsneg.trainer.negatives import patch_negatives, texture_negative
from nsneg.trainer.optim import build_optimizer, lr_at
from nsneg.trainer.tracking import MetricsLog, negatives_grid

#: Seconds after a stop signal within which another is torchrun forwarding the same Ctrl-C (it
#: signals its workers when it gets one itself, and kills them 30 s later if they are not done).
LAUNCHER_FORWARD_S = 10.0


def launched_by_torchrun() -> bool:
    """Whether this process is a worker of torchrun (torch.distributed.run sets this variable)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


class StopRequested(Exception):
    pass


class Trainer:
    def __init__(self, config: TrainConfig, device: str | None = None, show_progress: bool = True):
        self.config = c = config
        check_arch(c.arch)  # before any data is read
        if c.negatives_kind not in KINDS:
            raise ValueError(f"--negatives-kind must be one of {KINDS}")
        if c.optimizer is not None and c.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {c.optimizer!r}")
        if c.log_every < 1:
            raise ValueError(f"--log-every must be >= 1, got {c.log_every}")
        self.rank, self.world = (
            (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        )
        if c.batch_size % self.world:
            raise ValueError(
                f"--batch-size {c.batch_size} is not divisible by {self.world} processes"
            )
        self.per_rank = c.batch_size // self.world
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cuda = self.device.type == "cuda"
        self.channels_last = self.cuda if c.channels_last is None else c.channels_last
        self.bf16 = self.cuda if c.bf16 is None else c.bf16
        self.show_progress = show_progress and self.rank == 0
        if not c.negatives:
            raise ValueError("give the training data: --negatives (shards or an image folder)")
        self.folder = image_folder(c.negatives)
        if self.folder is not None:
            if "texture" in c.negatives_kind:
                raise ValueError(
                    f"--negatives-kind {c.negatives_kind} needs textures, and {c.negatives} is an image "
                    "folder without them: train it with --negatives-kind none or patch, or make "
                    "texture shards of it first (nsneg-textures)"
                )
            self.urls, samples = [], len(self.folder)
        else:
            self.urls, samples = resolve_urls(c.negatives, manifest_dirs=tuple(c.manifest_dirs))
        self.data = data_identity(c.negatives, tuple(c.manifest_dirs), images=self.folder)
        self.steps_per_epoch = c.steps_per_epoch or (
            max(1, samples // c.batch_size) if samples else None
        )
        if not self.steps_per_epoch:
            raise ValueError(
                "give --steps-per-epoch: the number of samples behind these urls is unknown"
            )
        if c.warmup >= c.epochs and c.warmup:
            raise ValueError(f"--warmup-epochs {c.warmup} must be fewer than --epochs {c.epochs}")
        torch.manual_seed(c.seed)  # same initial weights (and queue) on every rank
        bn_splits = 1 if self.world > 1 else math.gcd(self.per_rank, c.bn_splits)
        self.model: Method = c.method_class.from_config(c, bn_splits).to(self.device)
        if c.sync_bn and c.method == "moco":
            raise ValueError("--sync-bn is for byol and simclr: MoCo shuffles BN across processes")
        if c.sync_bn and self.world > 1:
            if not self.cuda:  # torch's SyncBatchNorm (and DDP with it) runs on GPUs only
                raise ValueError(
                    "--sync-bn needs GPU processes: torch's SyncBatchNorm has no CPU path"
                )
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.check_global_batch(c.batch_size)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, c)
        self.forward = self.model
        if self.world > 1:
            self.forward = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.cuda else None
            )
        if c.compile:  # each network's first call compiles it (minutes for a resnet50)
            for module in self.model.compiled_modules():
                module.compile(backend=c.compile_backend)
        self.epoch, self.step, self.samples_seen, self.skipped = 0, 0, 0, 0
        self.generator_states: list[torch.Tensor] | None = None  # each rank's, mid-epoch
        self.epoch_sums: dict[str, float] = {}  # metric sums over the epoch's steps so far
        self.stop_signal: int | None = None
        self.stop_time = 0.0  # time.monotonic() of the stop signal
        self.first_views: tuple[torch.Tensor, torch.Tensor | None] | None = None  # the grid's
        self.out = Path(c.out)
        self.checkpoint_path = self.out / "checkpoint.pt"

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    # ------------------------------------------------------------------ state
    def state(self, epoch_complete: bool) -> dict[str, Any]:
        """Everything a resume needs. Mid-epoch (``epoch_complete=False``) also every rank's
        generator and the epoch's metric sums, so that the resumed run goes on from the next
        batch exactly as if never stopped."""
        return {
            "method": self.config.method,
            "backbone": self.model.backbone_state_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch + 1 if epoch_complete else self.epoch,  # the epoch to run next
            "step": self.step,
            "samples_seen": self.samples_seen,
            "skipped": self.skipped,
            "generators": None if epoch_complete else self.generator_states,
            "epoch_sums": {} if epoch_complete else self.epoch_sums,
            "torch_rng": torch.get_rng_state(),  # MoCo's DDP key shuffle draws from it
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.cuda else None,
            "elastic_run_id": elastic.run_id(),  # a torchrun restart resumes its own run
            "config": to_dict(self.config),
            "data": self.data,  # what identifies the training data, wherever it is read from
        }

    def save(self, epoch_complete: bool) -> None:
        if self.rank == 0:
            checkpoint.save(self.checkpoint_path, self.state(epoch_complete))

    def restore(self, path: Path) -> None:
        state = checkpoint.load(path)
        if state["method"] != self.config.method:
            raise ValueError(
                f"{path} is a {state['method']} run; this run is --method {self.config.method}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.samples_seen, self.skipped = state["samples_seen"], state["skipped"]
        self.generator_states = state.get("generators")
        self.epoch_sums = dict(state.get("epoch_sums") or {})
        if state.get("torch_rng") is not None:
            torch.set_rng_state(state["torch_rng"])
        if self.cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    # ------------------------------------------------------------------ one step
    def nonsemantic(
        self, im_1: torch.Tensor, t: torch.Tensor, params_1, generator
    ) -> torch.Tensor | None:
        """[B, N, 3, H, W]: the texture with view 1's augmentation, then N patch-shuffled view-1 copies."""
        c, negatives = self.config, []
        if "texture" in c.negatives_kind:
            negatives.append(texture_negative(t, params_1))
        if "patch" in c.negatives_kind:
            negatives.append(
                patch_negatives(im_1, c.num_nonsem, tuple(c.patch_size_range), generator)
            )
        return torch.cat(negatives, dim=1) if negatives else None

    def lr_at(self, step: int) -> float:
        return lr_at(self.config, step, self.steps_per_epoch)

    def train_step(self, batch, generator: torch.Generator) -> dict[str, torch.Tensor | float]:
        """One optimisation step, without waiting for the device: the metrics come back as device tensors."""
        q, k, t, skipped = batch
        to = lambda x: x.to(self.device, non_blocking=True).float().div_(255)  # noqa: E731
        q, k, t = to(q), to(k), to(t)
        params_1 = sample_params(q.shape[0], generator)
        im_1, im_2 = augment(q, params_1), augment(k, sample_params(k.shape[0], generator))
        im_ns = self.nonsemantic(im_1, t, params_1, generator)
        if self.step == 0 and self.rank == 0:  # the run's first views, for its image grid
            self.first_views = (im_1[:4].detach(), None if im_ns is None else im_ns[:4].detach())
        if self.channels_last:
            im_1, im_2 = (x.contiguous(memory_format=torch.channels_last) for x in (im_1, im_2))
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss, metrics = self.forward(
                im_1, im_2, im_ns, progress=self.step / self.total_steps, generator=generator
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        self.samples_seen += q.shape[0]
        self.skipped += int(skipped.sum())  # counted by the loader, on the CPU
        check_fraction(
            self.skipped,
            self.samples_seen + self.skipped,
            self.config.max_skip_fraction,
            "each was logged with its shard and key as it was skipped",
        )
        return {"loss": loss.detach(), **metrics, "lr": lr}

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
        if self.folder is not None:
            return make_folder_loader(
                self.folder,
                batch_size=self.per_rank,
                image_size=c.image_size,
                steps=steps,
                workers=c.workers,
                seed=seed,
                pin_memory=self.cuda,
            )
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
        if self.stop_signal is not None:
            if launched_by_torchrun() and time.monotonic() - self.stop_time < LAUNCHER_FORWARD_S:
                return  # torchrun passing on the Ctrl-C it got too: the same stop
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.stop_signal, self.stop_time = signum, time.monotonic()
        if self.rank == 0:
            print(
                f"\nsignal {signum}: stopping after this step, writing checkpoint "
                f"{self.checkpoint_path} (again: stop at once, without it)",
                file=sys.stderr,
                flush=True,
            )

    def _report_stop(self, finished: bool) -> None:
        """After a stop's checkpoint: rank 0 says how to resume (or that the run is complete, when
        the signal came on its last step, and ``fit`` returns); then exit with 128 + signal."""
        if self.rank == 0:
            print(
                f"stopped by signal {self.stop_signal} at step {self.step}; checkpoint "
                f"{self.checkpoint_path} "
                + (
                    "holds the complete run (its last step was done)"
                    if finished
                    else f"(resume with --resume {self.checkpoint_path})"
                ),
                flush=True,
            )
        if not finished:
            raise SystemExit(128 + int(self.stop_signal)) from None

    def _stop_agreed(self, at_sync_point: bool) -> bool:
        """Whether to stop after this step. One process: as soon as a signal came. Several: all
        ranks stop after the same step, agreed at the steps that read the loss anyway."""
        if self.world == 1:
            return self.stop_signal is not None
        if not at_sync_point:
            return False
        flag = torch.tensor([float(self.stop_signal is not None)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.stop_signal is None:
            self.stop_signal = signal.SIGTERM
        return bool(flag.item())

    def _keep_generators(self, generator: torch.Generator) -> None:
        state = generator.get_state()
        if self.world > 1:
            states = [None] * self.world
            dist.all_gather_object(states, state)
            self.generator_states = states
        else:
            self.generator_states = [state]

    def fit(self) -> dict[str, float]:
        from tqdm import tqdm

        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        previous = {
            s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)
        }
        log = None
        if self.rank == 0:
            write_resolved(self.out, c, self.data)
            log = MetricsLog(self.out, c.wandb, {**to_dict(c), "data": self.data})
        metrics: dict[str, float] = {}
        try:
            while self.epoch < c.epochs:
                epoch_seed = c.seed * 1_000_003 + self.epoch
                generator = torch.Generator().manual_seed(epoch_seed * 1009 + self.rank)
                done = self.step - self.epoch * self.steps_per_epoch  # batches trained already
                sums = {name: torch.tensor(v) for name, v in self.epoch_sums.items()}
                if done and self.generator_states is not None:
                    generator.set_state(self.generator_states[self.rank])
                batches = itertools.islice(
                    self.loader(epoch_seed, self.steps_per_epoch), done, None
                )  # the same stream as the uninterrupted epoch, from its next batch
                bar = tqdm(
                    total=self.steps_per_epoch,
                    initial=done,
                    desc=f"epoch {self.epoch} [0-{c.epochs - 1}]",  # numbered from 0, as log.jsonl
                    unit="step",
                    disable=not self.show_progress,
                )
                start, steps = time.time(), 0
                for batch in batches:
                    step = self.train_step(batch, generator)
                    if log and self.first_views is not None:  # once per run
                        log.image("negatives", negatives_grid(*self.first_views), self.step)
                        self.first_views = None
                    for name, value in step.items():
                        if isinstance(value, torch.Tensor):
                            sums[name] = sums.get(name, 0.0) + value.float()  # on the device
                    steps += 1
                    read = (
                        self.step % c.log_every == 0
                        or self.step == (self.epoch + 1) * self.steps_per_epoch
                    )
                    if read:
                        metrics = {
                            name: (v.item() if isinstance(v, torch.Tensor) else v)
                            for name, v in step.items()
                        }
                        self.check_finite(metrics["loss"])
                        rate = steps * c.batch_size / (time.time() - start)
                        bar.set_postfix(
                            loss=f"{metrics['loss']:.3f}",
                            **{
                                n: f"{metrics[n]:.2f}"
                                for n in ("acc", "ns_outrank")
                                if n in metrics
                            },
                            img_s=f"{rate:.0f}",
                        )
                        if log:
                            log.write(
                                {
                                    "epoch": self.epoch,
                                    "step": self.step,
                                    **metrics,
                                    "img_per_s": rate,
                                    "skipped": self.skipped,
                                },
                                "step",
                                self.step,
                            )
                    bar.update()
                    if self._stop_agreed(read):
                        self.check_finite(step["loss"].item())
                        self._keep_generators(generator)
                        self.epoch_sums = {n: float(v) for n, v in sums.items()}
                        raise StopRequested
                bar.close()
                n = self.steps_per_epoch
                metrics = {
                    "epoch": self.epoch,
                    **{name: float(v) / n for name, v in sums.items()},
                    "img_per_s": steps * c.batch_size / max(time.time() - start, 1e-9),
                    "skipped": self.skipped,
                }
                self.check_finite(metrics["loss"])
                if log:
                    log.write({"epoch_end": True, **metrics}, "epoch", self.epoch)
                    log.flush()
                self.epoch_sums, self.generator_states = {}, None
                last = self.epoch + 1 == c.epochs
                stop = self._stop_agreed(at_sync_point=True)  # a signal after the last step's check
                if last or stop or (self.epoch + 1) % c.checkpoint_every == 0:
                    self.save(epoch_complete=True)
                self.epoch += 1
                if stop:
                    self._report_stop(finished=last)
        except StopRequested:
            self.save(epoch_complete=False)  # resuming goes on from the next batch
            self._report_stop(finished=False)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if log:
                log.close()
        return metrics
