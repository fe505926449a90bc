"""Pre-training with non-semantic negatives (MoCo v2, BYOL, SimCLR), CPU to multi-node: ``TrainConfig`` and ``Trainer``.

The command line (``nsneg-train``, reruns and resume rules) is ``nsneg.trainer.cli``.

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
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nsneg.datasets_manifest.format.skip_log import DEFAULT_MAX_SKIP_FRACTION, check_fraction
from nsneg.trainer import checkpoint
from nsneg.trainer.augment import augment, sample_params
from nsneg.trainer.data import (
    image_folder,
    make_folder_loader,
    make_loader,
    resolve_urls,
)
from nsneg.trainer.methods import METHODS
from nsneg.trainer.methods.base import Method
from nsneg.trainer.negatives import patch_negatives, texture_negative

KINDS = ("none", "texture", "patch", "texture+patch")
OPTIMIZERS = ("sgd", "lars")


def option(default, help: str = "", **click):
    """A TrainConfig field with its command-line help (``nsneg.trainer.cli`` makes the option)."""
    return field(default=default, metadata={"help": help, **click})


@dataclass
class TrainConfig:
    """Every setting of a run: the command line's options and their defaults are made from it."""

    negatives: str = option(None, "[required unless --resume] the training data: shard directory (with manifest.json), a published set's NAME[@VERSION] or folder url (hf://datasets/ORG/NAME, https://...), comma list / brace pattern of shard urls, or an ImageFolder tree (CLASS/*.JPEG; no textures: --negatives-kind none or patch)")  # fmt: skip
    out: str = option("runs/nsneg", "run folder: checkpoint.pt and log.jsonl")
    method: str = option("moco", "pre-training method", choices=tuple(METHODS))
    negatives_kind: str = option("texture+patch", "non-semantic negatives", choices=KINDS)
    num_nonsem: int = option(1, "patch negatives per image")
    alpha: float = option(2.0, "logit of a non-semantic negative = alpha a.t / T (every method)")
    patch_size_range: tuple[int, int] = option((16, 72), "at 224 px; scales with the view")
    arch: str = option("resnet50", "torchvision ResNet")
    image_size: int = option(224)
    small_images: bool = option(False, "3x3 stem, no max-pool [command line default: on at 48 px and below]")  # fmt: skip
    batch_size: int = option(512, "global batch over all processes")
    lr: float | None = option(None, "[default: the method's lr per 256 (moco 0.4, byol 0.5, simclr 0.3) * batch / 256]")  # fmt: skip
    optimizer: str | None = option(None, "[default: moco sgd, byol and simclr lars]", choices=OPTIMIZERS)  # fmt: skip
    weight_decay: float | None = option(None, "[default: moco 1e-4, byol 1e-6, simclr 1e-4]")
    warmup_epochs: int | None = option(None, "linear warm-up before the cosine [default: moco 0, byol and simclr 10, at most epochs / 10]")  # fmt: skip
    epochs: int = option(200)
    steps_per_epoch: int | None = option(None, "[default: samples // batch]")
    moco_dim: int = option(128)
    moco_k: int = option(16384, "queue size, a multiple of the batch")
    moco_m: float = option(0.99, "key encoder momentum")
    moco_t: float = option(0.2, "temperature")
    bn_splits: int = option(8, "moco, single process: BN sub-batches (shuffle BN)")
    byol_proj_hidden_dim: int = option(4096)
    byol_proj_dim: int = option(256)
    byol_pred_hidden_dim: int = option(8192)
    byol_tau_base: float = option(0.99, "target momentum at the start; it rises to 1 along a cosine")  # fmt: skip
    byol_ns_t: float = option(0.2, "temperature of the non-semantic term")
    simclr_proj_hidden_dim: int = option(4096)
    simclr_proj_dim: int = option(512)
    simclr_t: float = option(0.2, "NT-Xent temperature")
    workers: int = option(4, "DataLoader workers per process")
    shuffle_buffer: int = option(1000)
    checkpoint_every: int = option(1, "epochs")
    max_skip_fraction: float = option(DEFAULT_MAX_SKIP_FRACTION)
    compile: bool = option(False, "torch.compile the method's networks (moco: both encoders; byol: online and target backbone; simclr: the backbone)")  # fmt: skip
    compile_backend: str = option("inductor", 'torch.compile backend ("aot_eager": traced, no code generation)')  # fmt: skip
    channels_last: bool | None = option(None, "channels_last weights and views [default: on CUDA]")
    bf16: bool | None = option(None, "bf16 autocast [default: on CUDA]")
    log_every: int = option(10, "steps between reads of the loss (each read waits for the device)")
    seed: int = option(0)
    manifest_dirs: tuple[str, ...] = option((), "more published manifests (see nsneg-data list)")

    @property
    def method_class(self) -> type[Method]:
        return METHODS[self.method]

    @property
    def base_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return self.method_class.defaults.lr_per_256 * self.batch_size / 256

    @property
    def optimizer_name(self) -> str:
        return self.optimizer or self.method_class.defaults.optimizer

    @property
    def weight_decay_value(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return self.method_class.defaults.weight_decay

    @property
    def warmup(self) -> int:
        """Warm-up epochs: as given, else the method's, at most a tenth of the run."""
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return min(self.method_class.defaults.warmup_epochs, self.epochs // 10)


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up over ``warmup`` epochs, then a cosine to 0 at ``epochs * steps_per_epoch``."""
    total, warm = config.epochs * steps_per_epoch, config.warmup * steps_per_epoch
    if step < warm:
        return config.base_lr * (step + 1) / warm
    return config.base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / (total - warm))))


def build_optimizer(model: Method, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum 0.9) over all trained parameters, or LARS (lightly's) with biases and norm
    layers excluded from weight decay and from the trust ratio (as solo-learn's
    ``exclude_bias_n_norm``), trust coefficient 0.02 (solo-learn's ``eta``)."""
    params = [p for m in model.trained_modules() for p in m.parameters()]
    wd = config.weight_decay_value
    if config.optimizer_name == "sgd":
        return torch.optim.SGD(params, lr=config.base_lr, momentum=0.9, weight_decay=wd)
    from lightly.utils.lars import LARS

    decayed = [p for p in params if p.dim() > 1]
    excluded = [p for p in params if p.dim() <= 1]
    return LARS(
        [{"params": decayed, "weight_decay": wd}, {"params": excluded, "weight_decay": 0.0}],
        lr=config.base_lr,
        momentum=0.9,
        trust_coefficient=0.02,
    )


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
        if c.method not in METHODS:
            raise ValueError(f"--method must be one of {tuple(METHODS)}, got {c.method!r}")
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
        if self.step > self.epoch * self.steps_per_epoch and self.generator_states is None:
            print(  # a checkpoint written mid-epoch before generators were kept
                f"{path}: stopped mid-epoch by an older nsneg; its epoch goes on from the next "
                "batch, with other random augmentations than an uninterrupted run"
            )

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
        if self.stop_signal is not None:  # a second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        self.stop_signal = signum
        if self.rank == 0:
            print(
                f"\nsignal {signum}: stopping after this step, writing checkpoint "
                f"{self.checkpoint_path} (again: stop at once, without it)",
                file=sys.stderr,
                flush=True,
            )

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
        log = MetricsLog(self.out) if self.rank == 0 else None
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
                }
                self.check_finite(metrics["loss"])
                if log:
                    log.write({"epoch_end": True, **metrics}, "epoch", self.epoch)
                    log.flush()
                self.epoch_sums, self.generator_states = {}, None
                last = self.epoch + 1 == c.epochs
                if last or (self.epoch + 1) % c.checkpoint_every == 0:
                    self.save(epoch_complete=True)
                self.epoch += 1
        except StopRequested:
            self.save(epoch_complete=False)  # resuming goes on from the next batch
            if self.rank == 0:
                print(
                    f"stopped by signal {self.stop_signal} at step {self.step}; checkpoint "
                    f"{self.checkpoint_path} (resume with --resume {self.checkpoint_path})"
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
