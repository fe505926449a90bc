"""Out-of-domain top-1 of a frozen encoder and its linear head (``nsneg-eval robustness``).

Sets: ImageNet(-100) val, ImageNet-C (a released tree ``DIR/<corruption>/<severity>/<wnid>/*``,
or generated from the val images with ``nsneg.trainer.eval.corruptions``), ImageNet-Sketch, ImageNet-R
and Stylized-ImageNet (``DIR/<wnid>/*``). Every set is restricted to the classes the head was
trained on, matched by wnid folder name; a class a set lacks is simply absent (ImageNet-R has
200 classes). Predictions are the argmax over the head's classes.

Generated ImageNet-C follows the released set: the corruption is applied to the 224 x 224
centre crop of ``Resize(256)``, and the result goes through the same resize, crop and
normalisation as a released file would (``eval_transform`` of the head's image size).
Each image's randomness is seeded by its path ``<wnid>/<file>`` (``crop_seed_for``), so a run
is reproducible and every severity sees the same random field.

``evaluate_checkpoint`` returns the report (a JSON-ready dict); ``robustness_report`` shows it.
Problems are ``FileNotFoundError`` / ``ValueError`` naming the file or option.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision import datasets, transforms
from tqdm import tqdm

from nsneg.trainer.eval import compare, stats
from nsneg.trainer.eval.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from nsneg.trainer.eval.features import (
    backbone_from_checkpoint,
    dataset_features,
    eval_transform,
    feature_loader,
)
from nsneg.trainer.eval.outputs import evaluated, run_name
from nsneg.trainer.eval.probes import load_linear_head, top1
from nsneg.trainer.eval.report import mean_of_present

REPORT_FORMAT = "nsneg-robustness"
REPORT_VERSION = 1
C_RESIZE, C_CROP = 256, 224  # how ImageNet-C's images were cut from the val photos
OOD_SETS = {"sketch": "ImageNet-Sketch", "rendition": "ImageNet-R", "stylized": "Stylized-ImageNet"}
SET_TITLES = {"val": "ImageNet val", **OOD_SETS}


# --------------------------------------------------------------------------- model


@dataclass
class Model:
    backbone: nn.Module
    head: nn.Linear
    classes: list[str]
    arch: str
    image_size: int
    head_checkpoint: str
    config: dict = field(default_factory=dict)  # the checkpoint's training config


def load_model(checkpoint_path: Path, head_path: Path) -> Model:
    """Backbone and head, checked to belong together; a missing file is a FileNotFoundError,
    every other problem a ValueError that says which file."""
    backbone, config = backbone_from_checkpoint(checkpoint_path)
    head, info = load_linear_head(head_path)
    arch = config.get("arch", "resnet50")
    if info.get("arch") != arch:
        raise ValueError(
            f"linear head {head_path} was trained on {info.get('arch')} features, "
            f"but checkpoint {checkpoint_path} is a {arch}"
        )
    # Released MoCo checkpoints record no image size; ours do, and the head must have used it.
    if "image_size" in config and int(info.get("image_size", -1)) != int(config["image_size"]):
        raise ValueError(
            f"linear head {head_path} was trained at {info.get('image_size')} px, "
            f"but checkpoint {checkpoint_path} was trained at {config['image_size']} px"
        )
    return Model(
        backbone.eval(),
        head,
        list(info["classes"]),
        arch,
        int(info["image_size"]),
        str(info.get("checkpoint", "")),
        config,
    )


@torch.no_grad()
def logits(model: Model, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Head logits [B, C] of a normalised batch [B, 3, H, W], as ``extract_features`` then ``top1`` would."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        features = model.backbone(images.to(device))
    return model.head(features.float())


# --------------------------------------------------------------------------- data


def crop_seed_for(relative_path: str) -> int:
    """The corruption seed of an image: CRC-32 of its ``<wnid>/<file>`` path (stable across runs)."""
    return zlib.crc32(relative_path.encode("utf-8"))


class WnidFolder(Dataset):
    """The images of ``root/<wnid>/*`` for the wnids in ``classes``, labelled with their index there.

    ``max_per_class`` keeps the first N files (sorted) of each class."""

    def __init__(
        self,
        root: Path,
        classes: Sequence[str],
        transform: Callable,
        max_per_class: int | None = None,
    ):
        self.root, self.transform = Path(root), transform
        present = {wnid: i for i, wnid in enumerate(classes) if (self.root / wnid).is_dir()}
        samples = (
            datasets.folder.make_dataset(
                str(self.root), present, extensions=datasets.folder.IMG_EXTENSIONS, allow_empty=True
            )
            if present
            else []
        )
        taken: dict[int, int] = {}
        self.samples: list[tuple[str, int]] = []
        for path, label in samples:
            if max_per_class is None or taken.get(label, 0) < max_per_class:
                taken[label] = taken.get(label, 0) + 1
                self.samples.append((path, label))
        self.classes_found = len(taken)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(datasets.folder.default_loader(path)), label


class SeededCrops(WnidFolder):
    """The 224 px centre crops ImageNet-C starts from, in [0, 1], with each image's seed."""

    def __init__(self, root: Path, classes: Sequence[str], max_per_class: int | None = None):
        crop = transforms.Compose(
            [transforms.Resize(C_RESIZE), transforms.CenterCrop(C_CROP), transforms.ToTensor()]
        )
        super().__init__(root, classes, crop, max_per_class)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, label = super().__getitem__(index)
        return (
            image,
            label,
            crop_seed_for(Path(self.samples[index][0]).relative_to(self.root).as_posix()),
        )


def tensor_view(image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``eval_transform``'s resize, crop and normalisation, for batches already in [0, 1]."""
    return transforms.Compose(
        [t for t in eval_transform(image_size).transforms if not isinstance(t, transforms.ToTensor)]
    )


# --------------------------------------------------------------------------- evaluation


def evaluate_folder(
    model: Model,
    root: Path,
    device: torch.device,
    batch_size: int = 128,
    workers: int = 2,
    max_per_class: int | None = None,
    desc: str = "features",
) -> dict[str, Any]:
    """Top-1 on ``root/<wnid>/*`` (None when it shares no class with the head), with the counts."""
    dataset = WnidFolder(root, model.classes, eval_transform(model.image_size), max_per_class)
    result: dict[str, Any] = {
        "path": str(root),
        "top1": None,
        "classes": dataset.classes_found,
        "images": len(dataset),
    }
    if len(dataset):
        features, labels = dataset_features(
            model.backbone, dataset, batch_size, workers, device, desc
        )
        result["top1"] = top1(model.head.to(device), features, labels)
    return result


def evaluate_generated_c(
    model: Model,
    val_root: Path,
    corruptions: Sequence[str],
    severities: Sequence[int],
    device: torch.device,
    batch_size: int = 128,
    workers: int = 2,
    max_per_class: int | None = None,
) -> dict[tuple[str, int], dict[str, Any]]:
    """Top-1 on every (corruption, severity) of the val images, decoding each image once."""
    dataset = SeededCrops(val_root, model.classes, max_per_class)
    view = tensor_view(model.image_size)
    model.backbone.to(device)
    model.head.to(device)
    correct = {(name, s): 0 for name in corruptions for s in severities}
    for images, labels, seeds in tqdm(
        feature_loader(dataset, batch_size, workers, device),
        unit="batch",
        leave=False,
        desc=f"ImageNet-C ({len(correct)} variants)",
    ):
        images, labels, seeds = images.to(device), labels.to(device), seeds.tolist()
        for name, s in correct:
            predicted = logits(model, view(corrupt(images, name, s, seeds)), device).argmax(dim=1)
            correct[name, s] += int((predicted == labels).sum())
    return {
        key: {
            "path": f"generated from {val_root}",
            "top1": n / len(dataset) if len(dataset) else None,
            "classes": dataset.classes_found,
            "images": len(dataset),
        }
        for key, n in correct.items()
    }


def evaluate_c_tree(
    model: Model,
    root: Path,
    corruptions: Sequence[str],
    severities: Sequence[int],
    device: torch.device,
    **loader: Any,
) -> dict[tuple[str, int], dict[str, Any]]:
    """Top-1 on every ``root/<corruption>/<severity>`` of a released ImageNet-C tree."""
    missing = [
        f"{name}/{s}"
        for name in corruptions
        for s in severities
        if not (root / name / str(s)).is_dir()
    ]
    if missing:
        raise ValueError(
            f"ImageNet-C tree {root} lacks {len(missing)} of the requested corruption/severity "
            f"folders ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); "
            "choose the ones it has with --corruptions / --severities"
        )
    return {
        (name, s): evaluate_folder(
            model, root / name / str(s), device, desc=f"{name} {s}", **loader
        )
        for name in corruptions
        for s in severities
    }


def imagenet_c_summary(
    variants: dict[tuple[str, int], dict[str, Any]], source: str
) -> dict[str, Any]:
    """Per corruption: each severity's result and their mean top-1; overall: the mean of those means."""
    corruptions: dict[str, Any] = {}
    for (name, s), result in variants.items():
        corruptions.setdefault(name, {"severities": {}})["severities"][str(s)] = result
    for entry in corruptions.values():
        entry["mean"] = mean_of_present([r["top1"] for r in entry["severities"].values()])
    severities = sorted({s for _, s in variants})
    return {
        "source": source,
        "severities": severities,
        "corruptions": corruptions,
        "mean": mean_of_present([entry["mean"] for entry in corruptions.values()]),
    }


def add_intervals(report: dict[str, Any]) -> None:
    """Give every top-1 of a report its Wilson interval (``interval``: [low, high], or None).

    A set's top-1 is ``correct / images``. An ImageNet-C mean averages the same images over
    several variants; its interval takes the distinct images as ``n`` (the mean correctness
    of an image lies in [0, 1], so its variance is at most p (1 - p) / n: the interval is
    conservative), with ``round(mean * n)`` as the count."""

    def interval(top1: float | None, n: int) -> list[float] | None:
        estimate = stats.from_accuracy(top1, n)
        return None if estimate["low"] is None else [estimate["low"], estimate["high"]]

    for result in report["sets"].values():
        result["interval"] = interval(result["top1"], result["images"])
    c = report.get("imagenet_c")
    if not c:
        return
    distinct = 0
    for entry in c["corruptions"].values():
        for result in entry["severities"].values():
            result["interval"] = interval(result["top1"], result["images"])
        entry["images"] = max(r["images"] for r in entry["severities"].values())
        entry["interval"] = interval(entry["mean"], entry["images"])
        distinct = max(distinct, entry["images"])
    c["images"] = distinct
    c["interval"] = interval(c["mean"], distinct)


def evaluate_all(
    model: Model,
    val: Path,
    device: torch.device,
    ood: dict[str, Path],
    imagenet_c: Path | None,
    corruptions: Sequence[str],
    severities: Sequence[int],
    **loader: Any,
) -> dict[str, Any]:
    """Every set's result, keyed as in the JSON report (``sets`` and ``imagenet_c``)."""
    sets = {"val": evaluate_folder(model, val, device, desc="val", **loader)}
    if not sets["val"]["images"]:
        raise ValueError(
            f"{val} holds none of the head's {len(model.classes)} classes "
            f"({', '.join(model.classes[:3])}, ...) as DIR/<wnid>/<image> folders"
        )
    for key, root in ood.items():
        sets[key] = evaluate_folder(model, root, device, desc=key, **loader)
    report: dict[str, Any] = {"sets": sets}
    if corruptions:
        if imagenet_c is None:
            variants = evaluate_generated_c(model, val, corruptions, severities, device, **loader)
        else:
            variants = evaluate_c_tree(model, imagenet_c, corruptions, severities, device, **loader)
        report["imagenet_c"] = imagenet_c_summary(
            variants, "generated" if imagenet_c is None else str(imagenet_c)
        )
    return report


# --------------------------------------------------------------------------- options and the report


def parse_corruptions(text: str) -> list[str]:
    """``all``, ``none``, or comma-separated names from ``nsneg.trainer.eval.corruptions.CORRUPTIONS``."""
    if text.strip() == "all":
        return list(CORRUPTIONS)
    if text.strip() == "none":
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise ValueError(
            f"unknown corruption(s) {', '.join(unknown) or repr(text)}; "
            f"use all, none or some of: {', '.join(CORRUPTIONS)}"
        )
    return list(dict.fromkeys(names))


def parse_severities(text: str) -> list[int]:
    """Comma-separated severities from 1 to 5, sorted, each once."""
    try:
        severities = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        severities = []
    if not severities or not set(severities) <= set(SEVERITIES):
        raise ValueError(f"expected comma-separated severities from 1 to 5, got {text!r}")
    return severities


def load_report(path: Path) -> dict[str, Any]:
    """An earlier robustness.json (for ``--compare``); ValueError when it is not one."""
    return compare.load_report(path, "format", REPORT_FORMAT, "nsneg-eval robustness")


def evaluate_checkpoint(
    checkpoint_path: Path,
    head_path: Path,
    imagenet_val: Path,
    device: torch.device,
    ood: dict[str, Path],
    imagenet_c: Path | None,
    corruptions: Sequence[str],
    severities: Sequence[int],
    name: str | None = None,
    max_per_class: int | None = None,
    batch_size: int = 128,
    workers: int = 2,
) -> dict[str, Any]:
    """The robustness report of a checkpoint and its linear head (what robustness.json holds).

    ``ood`` maps keys of ``OOD_SETS`` to their folders; ``imagenet_c`` None generates ImageNet-C
    from the val images; ``name`` defaults to ``outputs.run_name(checkpoint_path)``."""
    model = load_model(checkpoint_path, head_path)
    results = evaluate_all(
        model,
        imagenet_val,
        device,
        ood,
        imagenet_c,
        corruptions,
        severities,
        batch_size=batch_size,
        workers=workers,
        max_per_class=max_per_class,
    )
    add_intervals(results)
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "name": name or run_name(checkpoint_path),
        "checkpoint": str(checkpoint_path),
        "evaluated": evaluated(checkpoint_path),
        "linear_head": str(head_path),
        "head_checkpoint": model.head_checkpoint,
        "config": model.config,
        "seed": model.config.get("seed"),
        "arch": model.arch,
        "image_size": model.image_size,
        "head_classes": len(model.classes),
        "chance": 1 / len(model.classes),
        "max_per_class": max_per_class,
        "interval_method": stats.INTERVAL_NAME,
        "requested_corruptions": list(corruptions),
        "requested_severities": list(severities),
        "skipped_sets": [key for key, found in results["sets"].items() if found["top1"] is None],
        **results,
    }
