"""A run's settings, ``TrainConfig``: every option of ``nsneg-train`` (made from its fields), and
the learning-rate schedule they define. Imports no torch, so ``nsneg-train --help`` is quick: the
method classes are imported when a resolved default (lr, optimizer, ...) is first asked for."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from nsneg.datasets_manifest.format.skip_log import DEFAULT_MAX_SKIP_FRACTION
from nsneg.trainer.methods import METHODS

KINDS = ("none", "texture", "patch", "texture+patch")
OPTIMIZERS = ("sgd", "lars")


def default_workers() -> int:
    """DataLoader workers per process by default: 4, but no more than this process's share of the
    CPUs it may run on (shared by torchrun's LOCAL_WORLD_SIZE processes of the node)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(4, (cpus or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))))


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
    workers: int = option(default_workers(), "DataLoader workers per process [default: 4, at most this machine's CPUs per process]")  # fmt: skip
    shuffle_buffer: int = option(1000)
    checkpoint_every: int = option(1, "epochs")
    max_skip_fraction: float = option(DEFAULT_MAX_SKIP_FRACTION)
    compile: bool = option(False, "torch.compile the method's networks (moco: both encoders; byol: online and target backbone; simclr: the backbone)")  # fmt: skip
    compile_backend: str = option("inductor", 'torch.compile backend ("aot_eager": traced, no code generation)')  # fmt: skip
    channels_last: bool | None = option(None, "channels_last weights and views [default: on CUDA]")
    bf16: bool | None = option(None, "bf16 autocast [default: on CUDA]")
    log_every: int = option(10, "steps between reads of the loss (each read waits for the device)")
    sync_bn: bool = option(False, "byol, simclr, several GPU processes: BatchNorm statistics over the global batch (torch's SyncBatchNorm; one process: no effect)")  # fmt: skip
    seed: int = option(0)
    manifest_dirs: tuple[str, ...] = option((), "more published manifests (see nsneg-data list)")

    @property
    def method_class(self) -> type:
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
