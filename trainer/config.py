"""A run's settings: ``TrainConfig``, its YAML form (``--config FILE``) and the resolved
configuration every run writes beside its checkpoint (``config.yaml``).

The YAML form holds ``TrainConfig``'s fields by name and each method's settings under the
method's name; any subset may be given, the rest take their defaults::

    method: byol
    negatives: /data/shards
    arch: timm:vit_small_patch16_224
    batch_size: 256
    byol:
      proj_dim: 256

The resolved configuration is that form with every value the run used (defaults filled in),
plus ``nsneg_version`` and ``data``: what identifies the training data whatever its path
(``nsneg.trainer.data_identity``). Training from it (``nsneg-train --config runs/x/config.yaml
--out runs/y``) reproduces the run; its ``data`` entry is checked against the data given.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nsneg.datasets_manifest.format.skip_log import DEFAULT_MAX_SKIP_FRACTION
from nsneg.trainer.methods import METHODS, settings_class_of

if TYPE_CHECKING:
    from nsneg.trainer.methods.base import Method

KINDS = ("none", "texture", "patch", "texture+patch")
OPTIMIZERS = ("sgd", "lars")
#: the resolved configuration's file in a run folder
RESOLVED_NAME = "config.yaml"
#: keys of the YAML form that are no ``TrainConfig`` field nor method
INFO_KEYS = ("nsneg_version", "data")


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
    """Every setting of a run: the command line's options and their defaults are made from it.

    ``method_settings``: the chosen method's settings (its ``Method.Settings``); None or a dict
    of some of its fields is filled in with the defaults."""

    negatives: str = option(None, "[required unless --resume] the training data: shard directory (with manifest.json), a published set's NAME[@VERSION] or folder url (hf://datasets/ORG/NAME, https://...), comma list / brace pattern of shard urls, or an ImageFolder tree (CLASS/*.JPEG; no textures: --negatives-kind none or patch)")  # fmt: skip
    out: str = option(
        "runs/nsneg", "run folder: checkpoint.pt, config.yaml, log.jsonl, tensorboard/"
    )
    method: str = option("moco", "pre-training method", choices=tuple(METHODS))
    negatives_kind: str = option("texture+patch", "non-semantic negatives", choices=KINDS)
    num_nonsem: int = option(1, "patch negatives per image")
    alpha: float = option(2.0, "logit of a non-semantic negative = alpha a.t / T (every method)")
    patch_size_range: tuple[int, int] = option((16, 72), "at 224 px; scales with the view")
    arch: str = option("resnet50", "backbone: a torchvision classification model (resnet50, convnext_tiny, vit_b_16, ...) or timm:NAME (pip install 'nsneg[timm]')")  # fmt: skip
    image_size: int = option(224)
    small_images: bool = option(False, "ResNets: 3x3 stem, no max-pool [command line default: on at 48 px and below]")  # fmt: skip
    batch_size: int = option(512, "global batch over all processes")
    lr: float | None = option(None, "[default: the method's lr per 256 (moco 0.4, byol 0.5, simclr 0.3) * batch / 256]")  # fmt: skip
    optimizer: str | None = option(None, "[default: moco sgd, byol and simclr lars]", choices=OPTIMIZERS)  # fmt: skip
    weight_decay: float | None = option(None, "[default: moco 1e-4, byol 1e-6, simclr 1e-4]")
    warmup_epochs: int | None = option(None, "linear warm-up before the cosine [default: moco 0, byol and simclr 10, at most epochs / 10]")  # fmt: skip
    epochs: int = option(200)
    steps_per_epoch: int | None = option(None, "[default: samples // batch]")
    bn_splits: int = option(8, "moco, single process, backbones with batch norm: BN sub-batches (shuffle BN)")  # fmt: skip
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
    wandb: str | None = option(None, "also log to Weights & Biases, project PROJECT (pip install 'nsneg[wandb]'; WANDB_MODE=offline works without an account)")  # fmt: skip
    method_settings: Any = field(default=None, metadata={"cli": False})

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {tuple(METHODS)}, got {self.method!r}")
        settings_class = settings_class_of(self.method)
        given = self.method_settings
        if given is None:
            self.method_settings = settings_class()
        elif isinstance(given, dict):
            known = {f.name for f in dataclasses.fields(settings_class)}
            if unknown := sorted(set(given) - known):
                raise ValueError(
                    f"{self.method} has no setting {', '.join(unknown)} (its settings: "
                    f"{', '.join(sorted(known)) or 'none'})"
                )
            self.method_settings = settings_class(**given)
        elif not isinstance(given, settings_class):
            raise ValueError(
                f"method_settings of --method {self.method} must be a {settings_class.__name__}"
            )
        self.patch_size_range = tuple(self.patch_size_range)
        self.manifest_dirs = tuple(self.manifest_dirs)

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


def run_fields() -> list[dataclasses.Field]:
    """``TrainConfig``'s fields that are settings of their own (all but ``method_settings``)."""
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)]


def to_dict(config: TrainConfig) -> dict[str, Any]:
    """The YAML form: plain values, the method's settings under its name."""
    plain = {f.name: getattr(config, f.name) for f in run_fields()}
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in plain.items()}
    return {**plain, config.method: dataclasses.asdict(config.method_settings)}


def from_dict(values: dict[str, Any], where: str = "config") -> TrainConfig:
    """A ``TrainConfig`` from the YAML form (any subset; other methods' sections are ignored);
    an unknown key is a ValueError naming the valid ones."""
    names = {f.name for f in run_fields()}
    unknown = sorted(set(values) - names - set(METHODS) - set(INFO_KEYS))
    if unknown:
        raise ValueError(
            f"{where}: unknown setting {', '.join(unknown)}; settings are {', '.join(sorted(names))} "
            f"and a section per method ({', '.join(METHODS)})"
        )
    plain = {k: v for k, v in values.items() if k in names}
    method = plain.get("method", TrainConfig.method)
    section = values.get(method) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{where}: {method}: expected its settings by name, got {section!r}")
    try:
        return TrainConfig(**plain, method_settings=dict(section))
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


def read_yaml(path: Path) -> dict[str, Any]:
    """A ``--config`` file's mapping (the YAML form); a clear ValueError for anything else."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"--config {path}: not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(
            f"--config {path}: expected settings by name, got a {type(values).__name__}"
        )
    from_dict(values, f"--config {path}")  # names and types checked before anything runs
    return values


def nsneg_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nsneg")
    except PackageNotFoundError:
        return "unknown"


def write_resolved(out: Path, config: TrainConfig, data: dict[str, Any] | None) -> Path:
    """``out/config.yaml``: the values the run uses, its nsneg version and its data's identity."""
    import yaml

    from nsneg.datasets_manifest.format.files import atomic_write_text

    resolved = {"nsneg_version": nsneg_version(), **to_dict(config), "data": data}
    path = Path(out) / RESOLVED_NAME
    atomic_write_text(path, yaml.safe_dump(resolved, sort_keys=False))
    return path
