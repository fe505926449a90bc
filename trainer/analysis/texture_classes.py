"""``texture-classes``: how much of each class is recognisable from its texture alone.

A linear probe is trained on ImageNet-Texture samples (frozen features) and tested on held-out
textures and on real photos, per class; the classes most and least recognisable from texture
are listed, and fine-grained classes (the ImageNet dog breeds) are compared with the rest.
Features are a checkpoint's frozen backbone or, without one, ``PixelStatistics``.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import IterableDataset

from nsneg.datasets_manifest.format.constants import IMAGENET_MEAN, IMAGENET_STD
from nsneg.datasets_manifest.format.manifest import load_manifest
from nsneg.datasets_manifest.format.sample_reader import iter_samples
from nsneg.datasets_manifest.format.skip_log import DEFAULT_MAX_SKIP_FRACTION, SkipLog
from nsneg.trainer.analysis.categories import FINE_GROUPS
from nsneg.trainer.analysis.cue_conflict import sobel_gradients, sobel_kernel
from nsneg.trainer.analysis.texture_classes_report import (
    fine_comparison,
    fine_verdict,
    plot_texture_classes,
    texture_class_report,
    texture_markdown,
)
from nsneg.trainer.eval import compare, outputs, stats
from nsneg.trainer.eval.features import (
    backbone_from_checkpoint,
    dataset_features,
    eval_transform,
    load_dataset,
)
from nsneg.trainer.eval.probes import predict, save_linear_head, top1, train_linear
from nsneg.trainer.eval.report import write_report

# --------------------------------------------------------------------------- features


class PixelStatistics(nn.Module):
    """The offline default feature: colour and texture statistics of the pixels, no learned weights.

    Per image: a histogram of each RGB channel (8 bins) and the gradient energy in 8
    orientations at 3 scales (Sobel on the grey image, unsigned angle, weighted by
    magnitude) -- 48 numbers. It needs no download and no ImageNet training, so a
    texture probe on it measures what plain colour and local-orientation statistics
    carry. Takes the ImageNet-normalised batches of ``eval_transform``.
    """

    BINS = 8
    SCALES = (1, 2, 4)
    DIM = 3 * BINS + len(SCALES) * BINS
    DESCRIPTION = (
        "pixels: colour histograms (3 x 8 bins) + gradient-orientation energy (8 orientations x 3 scales); "
        "no learned weights"
    )

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("sobel", sobel_kernel())  # [2, 1, 3, 3]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = (x.float() * self.std + self.mean).clamp(0, 1)
        n = rgb.shape[0]
        bins = torch.bucketize(
            rgb.flatten(2), torch.linspace(0, 1, self.BINS + 1, device=x.device)[1:-1]
        )
        parts = [F.one_hot(bins, self.BINS).float().mean(dim=2).flatten(1)]  # [N, 3 * BINS]
        grey = (rgb * self.luma).sum(dim=1, keepdim=True)
        for scale in self.SCALES:
            g = F.avg_pool2d(grey, scale) if scale > 1 else grey
            gx, gy = sobel_gradients(g, self.sobel)
            magnitude = torch.hypot(gx, gy).flatten(1)
            angle = torch.remainder(torch.atan2(gy, gx), torch.pi).flatten(1)
            index = (angle / torch.pi * self.BINS).long().clamp(max=self.BINS - 1)
            hist = torch.zeros(n, self.BINS, device=x.device).scatter_add_(1, index, magnitude)
            parts.append(hist / magnitude.shape[1])
        return torch.cat(parts, dim=1)


@dataclass
class FeatureExtractor:
    """A frozen feature extractor and how the report names it."""

    network: nn.Module
    image_size: int
    kind: str  # "checkpoint" or "pixels"
    description: str
    arch: str
    source: str


def load_feature_extractor(
    checkpoint_path: Path | None, image_size: int | None
) -> FeatureExtractor:
    """The checkpoint's frozen backbone (its training image size, else 224), or ``PixelStatistics``."""
    if checkpoint_path is None:
        return FeatureExtractor(
            PixelStatistics(),
            image_size or 224,
            "pixels",
            PixelStatistics.DESCRIPTION,
            "pixels",
            "pixels",
        )
    backbone, config = backbone_from_checkpoint(checkpoint_path)
    arch = config.get("arch", "resnet50")
    size = image_size or int(config.get("image_size", 224))
    description = f"frozen {arch} backbone of {checkpoint_path}"
    return FeatureExtractor(backbone, size, "checkpoint", description, arch, str(checkpoint_path))


# --------------------------------------------------------------------------- texture samples


def is_held_out(key: str, fraction: float) -> bool:
    """Whether a texture is held out of probe training: from its key alone (sha256), so every run,
    seed and feature choice tests on the same textures, and a photo's texture never straddles both sides."""
    return (
        int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") < fraction * 2.0**64
    )


class ShardViews(IterableDataset):
    """One view (``texture`` or ``source`` photo) of the samples of a split on one side of the
    held-out split, with their class index. Streams through ``iter_samples``."""

    def __init__(
        self,
        root: Path,
        split: str,
        view: str,
        held_out: bool,
        fraction: float,
        transform: Callable,
        skips: SkipLog | None = None,
    ):
        if view not in ("texture", "source"):
            raise ValueError(f"view must be 'texture' or 'source', not {view!r}")
        self.root, self.split, self.view, self.held_out = Path(root), split, view, held_out
        self.fraction, self.transform = fraction, transform
        self.skips = skips or SkipLog(1.0, spool=Path(tempfile.mkdtemp(".skips")))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        for sample in iter_samples(
            self.root, self.split, self.skips, decode_source=self.view == "source"
        ):
            if is_held_out(sample.key, self.fraction) == self.held_out:
                yield (
                    self.transform(sample.texture if self.view == "texture" else sample.source()),
                    sample.cls,
                )


def per_class_counts(
    predictions: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(correct, total) per class index."""
    labels = labels.long()
    total = torch.bincount(labels, minlength=num_classes)
    correct = torch.bincount(labels[predictions == labels], minlength=num_classes)
    return correct.numpy(), total.numpy()


def analyse(
    shards: Path,
    split: str,
    val_dir: Path | None,
    val_split: str,
    checkpoint_path: Path | None,
    holdout: float,
    epochs: int,
    lr: float,
    seed: int,
    top: int,
    image_size: int | None,
    batch_size: int,
    workers: int,
    device: torch.device,
    out_dir: Path,
    say: Callable[[str], None] = print,
    max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION,
    name: str | None = None,
    others: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Train the texture probe, evaluate it per class, write texture-classes.{md,json,png} and the
    probe into ``out_dir`` (the Markdown beside ``others``, earlier texture-classes reports);
    returns the report. Progress notes go to ``say``. ``out_dir`` must not hold another model's
    report (``outputs.claim``)."""
    outputs.claim(out_dir, "texture-classes", subject(checkpoint_path, shards))
    manifest = load_manifest(shards)
    if split not in manifest["splits"]:
        raise ValueError(f"{shards} has no split {split!r} (it has {sorted(manifest['splits'])})")
    classes: list[str] = list(manifest["classes"])
    features = load_feature_extractor(checkpoint_path, image_size)
    say(f"features: {features.description} (image size {features.image_size})")
    transform = eval_transform(features.image_size)

    bad_samples: dict[
        str, Any
    ] = {}  # the sample policy's skips, per view (each pass sees them all)

    def views(view: str, held_out: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        skips = SkipLog(max_skip_fraction, spool=Path(tempfile.mkdtemp(".skips")))
        dataset = ShardViews(shards, split, view, held_out, holdout, transform, skips)
        try:
            found = dataset_features(features.network, dataset, batch_size, workers, device, desc)
            bad_samples[view] = skips.finish()
            return found
        except ValueError as e:
            if not str(e).startswith("no images"):
                raise
            side = "held-out" if held_out else "training"
            raise ValueError(
                f"{shards} split {split!r} has no {side} textures with --holdout {holdout}: "
                "use more samples or another fraction"
            ) from None

    train_x, train_y = views("texture", False, "train textures")
    test_x, test_y = views("texture", True, "held-out textures")
    real: dict[str, Any] = {"source": None, "samples": 0, "dropped_classes": []}
    real_x = real_y = None
    if val_dir is not None:
        val_set, val_classes = load_dataset(val_dir, val_split, features.image_size)
        val_x, val_y = dataset_features(
            features.network, val_set, batch_size, workers, device, "real images"
        )
        to_shard = torch.tensor([classes.index(c) if c in classes else -1 for c in val_classes])
        mapped = to_shard[val_y]
        real_x, real_y = val_x[mapped >= 0], mapped[mapped >= 0]
        real.update(
            source=f"--val {val_dir}", dropped_classes=sorted(set(val_classes) - set(classes))
        )
        if real["dropped_classes"]:
            say(
                f"note: {len(real['dropped_classes'])} --val classes are not in the shards and are left out: "
                f"{real['dropped_classes'][:5]}"
            )
        if len(real_y) == 0:
            raise ValueError(f"no --val image belongs to a class of {shards}")
    elif manifest.get("has_source"):
        real_x, real_y = views("source", True, "held-out source photos")
        real["source"] = "the shards' source photos of the held-out keys"
    else:
        say("note: the shards hold no source photos and no --val was given: no real-image accuracy")

    batch_used = min(batch_size, len(train_y))
    if batch_used < batch_size:
        say(
            f"note: probe batch size {batch_size} asked, {batch_used} used: there are only "
            f"{batch_used} training textures"
        )
    head = train_linear(
        train_x.to(device),
        train_y,
        len(classes),
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
    )
    texture_counts = per_class_counts(predict(head, test_x), test_y, len(classes))
    real_counts = (
        per_class_counts(predict(head, real_x), real_y, len(classes))
        if real_x is not None
        else None
    )
    real["samples"] = 0 if real_y is None else len(real_y)
    train_counts = np.bincount(train_y.numpy(), minlength=len(classes))
    body = texture_class_report(classes, texture_counts, real_counts, train_counts, top)
    comparison = fine_comparison(body["groups"])
    out_dir.mkdir(parents=True, exist_ok=True)
    head_path = out_dir / "texture-probe.pt"
    save_linear_head(head_path, head, classes, features.arch, features.image_size, features.source)
    report = {
        "analysis": "texture-classes",
        "name": name or default_name(checkpoint_path, shards),
        "evaluated": subject(checkpoint_path, shards),
        "features": {
            "kind": features.kind,
            "description": features.description,
            "arch": features.arch,
            "source": features.source,
            "image_size": features.image_size,
        },
        "shards": str(shards),
        "split": split,
        "holdout": holdout,
        "epochs": epochs,
        "lr": lr,
        "seed": seed,
        "batch_size": batch_used,
        "batch_size_requested": batch_size,
        "texture_train": len(train_y),
        "texture_held_out": len(test_y),
        "real": real,
        "bad_samples": bad_samples,
        "top1": {
            "texture_held_out": top1(head, test_x, test_y),
            "texture_held_out_estimate": stats.proportion(
                int(texture_counts[0].sum()), int(texture_counts[1].sum())
            ),
            "real": top1(head, real_x, real_y) if real_x is not None else None,
            "real_estimate": stats.proportion(
                int(real_counts[0].sum()) if real_counts is not None else 0,
                int(real_counts[1].sum()) if real_counts is not None else 0,
            ),
            "chance": 1 / len(classes),
            "interval_method": stats.INTERVAL_NAME,
        },
        **body,
        "fine_groups": {
            name: {"ancestor": ancestor, "imagenet_classes": len(members)}
            for name, (ancestor, members) in FINE_GROUPS.items()
        },
        "fine_vs_rest_comparison": comparison,
        "fine_vs_rest": fine_verdict(body["groups"], comparison),
        "outputs": {
            **{name: str(out_dir / f"texture-classes.{name}") for name in ("md", "json", "png")},
            "probe": str(head_path),
        },
    }
    plot_texture_classes(
        body["classes"],
        1 / len(classes),
        out_dir / "texture-classes.png",
        compare.unique_names([report, *others]) if others else (),
    )
    write_report(out_dir, "texture-classes", report, texture_markdown(report, others))
    return report


def subject(checkpoint_path: Path | None, shards: Path) -> str:
    """What a texture-classes report evaluated: the checkpoint, or the pixel features of ``shards``."""
    if checkpoint_path is not None:
        return outputs.evaluated(checkpoint_path)
    return f"pixels features of {Path(shards).resolve()}"


def default_name(checkpoint_path: Path | None, shards: Path) -> str:
    """The checkpoint's run name, or ``pixels-<shard folder>`` without a checkpoint."""
    if checkpoint_path is not None:
        return outputs.run_name(checkpoint_path)
    return f"pixels-{Path(shards).resolve().name}"


def load_report(path: Path) -> dict[str, Any]:
    """An earlier texture-classes.json (for ``--compare``); ValueError when it is not one."""
    report = compare.load_report(
        path, "analysis", "texture-classes", "nsneg-analyze texture-classes"
    )
    checkpoint = (
        report["features"]["source"] if report["features"]["kind"] == "checkpoint" else None
    )
    return {"name": default_name(checkpoint, report["shards"]), **report}
