"""Frozen features for evaluation: the eval view, the datasets it reads, one feature DataLoader,
and a checkpoint's backbone loaded with one error policy.

Images come from an ImageFolder tree (``DIR/<class>/<image>``) or from the source photos of a
shard set; features are the pooled backbone outputs (MLP head removed) of centre-cropped images.
Every problem with an input is a ``FileNotFoundError`` or ``ValueError`` naming the file;
the command-line modules turn them into click errors.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torchvision import datasets, transforms
from tqdm import tqdm

from nsneg.datasets_manifest.format.constants import IMAGENET_MEAN, IMAGENET_STD
from nsneg.datasets_manifest.format.manifest import load_manifest
from nsneg.datasets_manifest.format.naming import MANIFEST_NAME
from nsneg.datasets_manifest.format.sample_reader import iter_samples
from nsneg.datasets_manifest.format.skip_log import DEFAULT_MAX_SKIP_FRACTION, SkipLog
from nsneg.trainer import checkpoint

# --------------------------------------------------------------------------- backbone


def backbone_from_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """``checkpoint.load_backbone`` with readable errors: ``FileNotFoundError`` for a missing file,
    ``ValueError`` for a foreign checkpoint (the message names the file and what was expected) or
    a file that is not a (complete) torch checkpoint at all."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return checkpoint.load_backbone(path)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(
            f"{path} is not a readable torch checkpoint ({type(e).__name__}: {str(e)[:200]})"
        ) from None


# --------------------------------------------------------------------------- data


def eval_transform(image_size: int) -> Callable:
    """The usual evaluation view: short side to 256/224 of the crop, centre crop, ImageNet normalisation."""
    return transforms.Compose(
        [
            transforms.Resize(round(image_size * 256 / 224)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class ShardSources(IterableDataset):
    """The source photos of one split of a shard set, with their class index.

    Streams through ``iter_samples`` (the sample policy: a bad sample is skipped into
    ``skips``, spooled from DataLoader workers; ``skips.finish()`` after reading); each
    DataLoader worker reads its own shards, so every sample is read once whatever
    ``num_workers`` is.
    """

    def __init__(
        self,
        root: Path,
        split: str,
        transform: Callable,
        max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION,
    ):
        manifest = load_manifest(root)
        if not manifest.get("has_source"):
            raise ValueError(
                f"{root} holds textures only (built with --no-source): no source photos to evaluate on"
            )
        if split not in manifest["splits"]:
            raise ValueError(f"{root} has no split {split!r} (it has {sorted(manifest['splits'])})")
        self.root, self.split, self.transform = Path(root), split, transform
        self.classes: list[str] = list(manifest["classes"])
        self.samples: int = manifest["splits"][split]["samples"]
        self.skips = SkipLog(max_skip_fraction, spool=Path(tempfile.mkdtemp(".skips")))

    def __len__(self) -> int:
        return self.samples

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        for sample in iter_samples(self.root, self.split, self.skips, decode_source=True):
            yield self.transform(sample.source()), sample.cls


def load_dataset(
    path: Path,
    split: str,
    image_size: int,
    max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION,
) -> tuple[Dataset, list[str]]:
    """A shard directory (it has a manifest; ``split`` picks the split) or an ImageFolder tree
    -> (dataset of (image, class index), class names in index order)."""
    path = Path(path)
    if (path / MANIFEST_NAME).exists():
        dataset = ShardSources(path, split, eval_transform(image_size), max_skip_fraction)
    else:
        try:
            dataset = datasets.ImageFolder(str(path), eval_transform(image_size))
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{path} is neither a shard directory (no {MANIFEST_NAME}) "
                f"nor an ImageFolder tree DIR/<class>/<image>: {e}"
            ) from None
    if len(dataset) == 0:
        where = f" in split {split!r}" if isinstance(dataset, ShardSources) else ""
        raise ValueError(f"{path} holds no images{where}")
    return dataset, list(dataset.classes)


def align_classes(train_classes: list[str], val_classes: list[str]) -> torch.Tensor:
    """Val class index -> train class index, matched by name, so two sets listing the same
    classes in another order still agree; different class sets are an error."""
    only_train, only_val = (
        sorted(set(train_classes) - set(val_classes)),
        sorted(set(val_classes) - set(train_classes)),
    )
    if only_train or only_val:
        raise ValueError(
            f"train and val classes differ: {len(only_train)} only in train {only_train[:5]}, "
            f"{len(only_val)} only in val {only_val[:5]}"
        )
    index = {name: i for i, name in enumerate(train_classes)}
    return torch.tensor([index[name] for name in val_classes], dtype=torch.long)


# --------------------------------------------------------------------------- extraction


def feature_loader(
    dataset: Dataset, batch_size: int, workers: int, device: torch.device | str
) -> DataLoader:
    """The one DataLoader every evaluation reads features through: in order, pinned for CUDA."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
    )


@torch.no_grad()
def extract_features(
    backbone: nn.Module, loader: DataLoader, device: torch.device | str, desc: str = "features"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features [N, D] (float32, on the CPU) and labels [N] of every batch of ``loader``."""
    device = torch.device(device)
    backbone = backbone.eval().to(device)
    features, labels = [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False, disable=None):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = backbone(images.to(device, non_blocking=True))
        features.append(out.float().cpu())
        labels.append(torch.as_tensor(targets, dtype=torch.long))
    if not features:
        raise ValueError("no images to extract features from")
    return torch.cat(features), torch.cat(labels)


def dataset_features(
    backbone: nn.Module,
    dataset: Dataset,
    batch_size: int,
    workers: int,
    device: torch.device | str,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``extract_features`` of a dataset through ``feature_loader``."""
    return extract_features(
        backbone, feature_loader(dataset, batch_size, workers, device), device, desc
    )


@dataclass
class ProbeFeatures:
    """Train and val features of one backbone, val labels in train's class order."""

    train_features: torch.Tensor  # [N_train, D]
    train_labels: torch.Tensor  # [N_train]
    val_features: torch.Tensor  # [N_val, D]
    val_labels: torch.Tensor  # [N_val], indices into ``classes``
    classes: list[str]  # train's class names, in index order
    info: dict[str, Any]  # the report's fields: checkpoint, arch, image_size, sets and their sizes


def probe_features(
    device: torch.device,
    checkpoint_path: Path,
    train_dir: Path,
    val_dir: Path,
    train_split: str,
    val_split: str,
    image_size: int | None,
    batch_size: int,
    workers: int,
    max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION,
) -> ProbeFeatures:
    """The features ``nsneg-eval knn`` and ``linear`` read: a checkpoint's backbone over two sets.
    ``info["skipped"]``: the bad samples skipped in each shard directory (``SkipLog``)."""
    backbone, config = backbone_from_checkpoint(checkpoint_path)
    image_size = image_size or int(config.get("image_size", 224))
    train_set, classes = load_dataset(train_dir, train_split, image_size, max_skip_fraction)
    val_set, val_classes = load_dataset(val_dir, val_split, image_size, max_skip_fraction)
    val_to_train = align_classes(classes, val_classes)
    train_x, train_y = dataset_features(
        backbone, train_set, batch_size, workers, device, "train features"
    )
    val_x, val_y = dataset_features(backbone, val_set, batch_size, workers, device, "val features")
    info = {
        "checkpoint": str(checkpoint_path),
        "arch": config.get("arch", "resnet50"),
        "image_size": image_size,
        "train": str(train_dir),
        "val": str(val_dir),
        "classes": len(classes),
        "train_samples": len(train_y),
        "val_samples": len(val_y),
        "skipped": {
            side: dataset.skips.finish()
            for side, dataset in (("train", train_set), ("val", val_set))
            if isinstance(dataset, ShardSources)
        },
    }
    return ProbeFeatures(train_x, train_y, val_x, val_to_train[val_y], classes, info)
