"""``texture-classes``: how much of each class is recognisable from its texture alone.

A linear probe is trained on ImageNet-Texture samples (frozen features) and tested on held-out
textures and on real photos, per class; the classes most and least recognisable from texture
are listed, and fine-grained classes (the ImageNet dog breeds) are compared with the rest.
Features are a checkpoint's frozen backbone or, without one, ``PixelStatistics``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import IterableDataset

from pipeline import contract
from pipeline.encoders import IMAGENET_MEAN, IMAGENET_STD
from trainer.analysis.categories import FINE_GROUPS, fine_group
from trainer.analysis.cue_conflict import sobel_gradients, sobel_kernel
from trainer.eval.features import (
    backbone_from_checkpoint,
    dataset_features,
    eval_transform,
    load_dataset,
)
from trainer.eval.probes import predict, save_linear_head, top1, train_linear
from trainer.eval.report import figure, markdown_table, percent, save_png, text_table, write_report

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
    DESCRIPTION = ("pixels: colour histograms (3 x 8 bins) + gradient-orientation energy (8 orientations x 3 scales); "
                   "no learned weights")

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("sobel", sobel_kernel())  # [2, 1, 3, 3]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = (x.float() * self.std + self.mean).clamp(0, 1)
        n = rgb.shape[0]
        bins = torch.bucketize(rgb.flatten(2), torch.linspace(0, 1, self.BINS + 1, device=x.device)[1:-1])
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


def load_feature_extractor(checkpoint_path: Path | None, image_size: int | None) -> FeatureExtractor:
    """The checkpoint's frozen backbone (its training image size, else 224), or ``PixelStatistics``."""
    if checkpoint_path is None:
        return FeatureExtractor(PixelStatistics(), image_size or 224, "pixels", PixelStatistics.DESCRIPTION,
                                "pixels", "pixels")
    backbone, config = backbone_from_checkpoint(checkpoint_path)
    arch = config.get("arch", "resnet50")
    size = image_size or int(config.get("image_size", 224))
    description = f"frozen {arch} backbone of {checkpoint_path}"
    return FeatureExtractor(backbone, size, "checkpoint", description, arch, str(checkpoint_path))


# --------------------------------------------------------------------------- texture samples


def is_held_out(key: str, fraction: float) -> bool:
    """Whether a texture is held out of probe training: from its key alone (sha256), so every run,
    seed and feature choice tests on the same textures, and a photo's texture never straddles both sides."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") < fraction * 2.0**64


class ShardViews(IterableDataset):
    """One view (``texture`` or ``source`` photo) of the samples of a split on one side of the
    held-out split, with their class index. Streams through ``contract.iter_samples``."""

    def __init__(self, root: Path, split: str, view: str, held_out: bool, fraction: float, transform: Callable):
        if view not in ("texture", "source"):
            raise ValueError(f"view must be 'texture' or 'source', not {view!r}")
        self.root, self.split, self.view, self.held_out = Path(root), split, view, held_out
        self.fraction, self.transform = fraction, transform

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        for sample in contract.iter_samples(self.root, self.split):
            if is_held_out(sample.key, self.fraction) == self.held_out:
                yield self.transform(sample.texture if self.view == "texture" else sample.source()), sample.cls



def per_class_counts(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(correct, total) per class index."""
    labels = labels.long()
    total = torch.bincount(labels, minlength=num_classes)
    correct = torch.bincount(labels[predictions == labels], minlength=num_classes)
    return correct.numpy(), total.numpy()


def _ratio(correct: int, total: int) -> float | None:
    return correct / total if total else None


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None



# --------------------------------------------------------------------------- the report


Counts = tuple[np.ndarray, np.ndarray]  # (correct, total) per class index


def texture_class_report(classes: list[str], texture: Counts, real: Counts | None, train_counts: np.ndarray,
                         top: int) -> dict[str, Any]:
    """Per-class rows, the most/least recognisable classes and the fine-vs-rest comparison from
    per-class (correct, total) counts. Class means are macro averages over classes with test images."""
    rows = []
    for i, wnid in enumerate(classes):
        row = {"index": i, "wnid": wnid, "group": fine_group(wnid) or "rest", "train": int(train_counts[i]),
               "texture_correct": int(texture[0][i]), "texture_n": int(texture[1][i]),
               "texture_acc": _ratio(int(texture[0][i]), int(texture[1][i]))}
        if real is not None:
            correct, total = int(real[0][i]), int(real[1][i])
            row.update(real_correct=correct, real_n=total, real_acc=_ratio(correct, total))
        rows.append(row)
    tested = [r for r in rows if r["texture_acc"] is not None]
    most = sorted(tested, key=lambda r: (-r["texture_acc"], r["wnid"]))[:top]
    least = sorted(tested, key=lambda r: (r["texture_acc"], r["wnid"]))[:top]
    groups = {}
    for name in [*FINE_GROUPS, "rest"]:
        members = [r for r in rows if r["group"] == name]
        texture_mean = _mean([r["texture_acc"] for r in members])
        real_mean = _mean([r.get("real_acc") for r in members])
        groups[name] = {
            "classes": len(members), "tested": sum(r["texture_acc"] is not None for r in members),
            "mean_texture_acc": texture_mean, "mean_real_acc": real_mean,
            "texture_over_real": texture_mean / real_mean if texture_mean is not None and real_mean else None,
        }
    return {"classes": rows, "most_recognisable": [r["wnid"] for r in most],
            "least_recognisable": [r["wnid"] for r in least], "groups": groups}


def _fine_verdict(groups: dict[str, dict[str, Any]]) -> str:
    """One sentence per fine group: its mean texture accuracy against the rest's, or why there is none."""
    rest = groups["rest"]
    sentences = []
    for name, (ancestor, _) in FINE_GROUPS.items():
        fine = groups[name]
        if fine["mean_texture_acc"] is None or rest["mean_texture_acc"] is None:
            sentences.append(f"{name} ({ancestor}) vs rest: not comparable ({fine['tested']} {name} and "
                             f"{rest['tested']} other classes with held-out textures).")
            continue
        diff = fine["mean_texture_acc"] - rest["mean_texture_acc"]
        sentences.append(
            f"{name} ({ancestor}): mean texture accuracy {percent(fine['mean_texture_acc'])} over {fine['tested']} "
            f"class(es) vs {percent(rest['mean_texture_acc'])} over {rest['tested']} other class(es) "
            f"({100 * diff:+.1f} points: "
            f"{name} are {'more' if diff > 0 else 'less' if diff < 0 else 'as'} recognisable from texture"
            f"{' than' if diff else ' as'} the rest).")
    return " ".join(sentences)


def plot_texture_classes(rows: list[dict[str, Any]], chance: float, path: Path) -> None:
    """Sorted bars of per-class held-out texture accuracy, fine-group classes in their own colour."""
    tested = sorted((r for r in rows if r["texture_acc"] is not None), key=lambda r: (-r["texture_acc"], r["wnid"]))
    fig = figure(max(6.0, min(24.0, 0.25 * len(tested) + 2)), 4.5)
    ax = fig.add_subplot()
    colours = ["tab:orange" if r["group"] != "rest" else "tab:blue" for r in tested]
    ax.bar(range(len(tested)), [100 * r["texture_acc"] for r in tested], color=colours, width=0.85)
    ax.axhline(100 * chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({100 * chance:.1f}%)")
    if len(tested) <= 60:
        ax.set_xticks(range(len(tested)), [r["wnid"] for r in tested], rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(tested)} classes, sorted")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color="tab:orange", label=" / ".join(FINE_GROUPS)), Patch(color="tab:blue", label="rest"),
                       *ax.get_legend_handles_labels()[0]], fontsize=8, loc="upper right")
    ax.set_ylabel("held-out texture accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("How much of each class is recognisable from texture alone")
    save_png(fig, path)


def class_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Headers and cells of per-class rows (real-image columns only when there were real images)."""
    has_real = bool(rows) and "real_acc" in rows[0]
    headers = ["class", "group", "train", "texture held-out", "n"] + (["real", "n"] if has_real else [])
    cells = [[r["wnid"], r["group"], r["train"], percent(r["texture_acc"]), r["texture_n"]]
             + ([percent(r["real_acc"]), r["real_n"]] if has_real else []) for r in rows]
    return headers, cells


def _texture_markdown(report: dict[str, Any]) -> str:
    rows, has_real = report["classes"], report["real"]["source"] is not None
    by_wnid = {r["wnid"]: r for r in rows}
    most, least = [by_wnid[w] for w in report["most_recognisable"]], [by_wnid[w] for w in report["least_recognisable"]]
    top1s = report["top1"]
    md = [
        "# Texture recognisability per class", "",
        f"* features: {report['features']['description']}",
        f"* shards: `{report['shards']}` split `{report['split']}`; {report['texture_train']} textures train the "
        "probe, "
        f"{report['texture_held_out']} are held out (sha256 of the key < {report['holdout']})",
        f"* real images: {report['real']['source'] or 'none (the shards hold no source photos and no --val was given)'}"
        + (f", {report['real']['samples']} images" if has_real else ""),
        f"* top-1: held-out textures {percent(top1s['texture_held_out'])}, real {percent(top1s['real'])}, "
        f"chance {percent(top1s['chance'])} ({len(rows)} classes)", "",
        "## Fine-grained classes vs the rest", "", report["fine_vs_rest"], "",
        markdown_table(["group", "classes", "tested", "mean texture acc", "mean real acc", "texture / real"],
                       [[name, g["classes"], g["tested"], percent(g["mean_texture_acc"]), percent(g["mean_real_acc"]),
                         '-' if g["texture_over_real"] is None else f"{g['texture_over_real']:.3f}"] for name, g in report["groups"].items()]), "",
        f"## Most recognisable from texture (top {len(most)})", "", markdown_table(*class_table(most)), "",
        f"## Least recognisable from texture (bottom {len(least)})", "", markdown_table(*class_table(least)), "",
        "## All classes", "", markdown_table(*class_table(rows)),
    ]
    return "\n".join(md)



# --------------------------------------------------------------------------- the analysis


def analyse(shards: Path, split: str, val_dir: Path | None, val_split: str, checkpoint_path: Path | None,
            holdout: float, epochs: int, lr: float, seed: int, top: int, image_size: int | None, batch_size: int,
            workers: int, device: torch.device, out_dir: Path, say: Callable[[str], None] = print
            ) -> dict[str, Any]:
    """Train the texture probe, evaluate it per class, write texture-classes.{md,json,png} and the
    probe into ``out_dir``; returns the report. Progress notes go to ``say``."""
    manifest = contract.load_manifest(shards)
    if split not in manifest["splits"]:
        raise ValueError(f"{shards} has no split {split!r} (it has {sorted(manifest['splits'])})")
    classes: list[str] = list(manifest["classes"])
    features = load_feature_extractor(checkpoint_path, image_size)
    say(f"features: {features.description} (image size {features.image_size})")
    transform = eval_transform(features.image_size)

    def views(view: str, held_out: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        dataset = ShardViews(shards, split, view, held_out, holdout, transform)
        try:
            return dataset_features(features.network, dataset, batch_size, workers, device, desc)
        except ValueError as e:
            if not str(e).startswith("no images"):
                raise
            side = "held-out" if held_out else "training"
            raise ValueError(f"{shards} split {split!r} has no {side} textures with --holdout {holdout}: "
                             "use more samples or another fraction") from None

    train_x, train_y = views("texture", False, "train textures")
    test_x, test_y = views("texture", True, "held-out textures")
    real: dict[str, Any] = {"source": None, "samples": 0, "dropped_classes": []}
    real_x = real_y = None
    if val_dir is not None:
        val_set, val_classes = load_dataset(val_dir, val_split, features.image_size)
        val_x, val_y = dataset_features(features.network, val_set, batch_size, workers, device, "real images")
        to_shard = torch.tensor([classes.index(c) if c in classes else -1 for c in val_classes])
        mapped = to_shard[val_y]
        real_x, real_y = val_x[mapped >= 0], mapped[mapped >= 0]
        real.update(source=f"--val {val_dir}", dropped_classes=sorted(set(val_classes) - set(classes)))
        if real["dropped_classes"]:
            say(f"note: {len(real['dropped_classes'])} --val classes are not in the shards and are left out: "
                f"{real['dropped_classes'][:5]}")
        if len(real_y) == 0:
            raise ValueError(f"no --val image belongs to a class of {shards}")
    elif manifest.get("has_source"):
        real_x, real_y = views("source", True, "held-out source photos")
        real["source"] = "the shards' source photos of the held-out keys"
    else:
        say("note: the shards hold no source photos and no --val was given: no real-image accuracy")

    head = train_linear(train_x.to(device), train_y, len(classes), epochs=epochs, lr=lr,
                        batch_size=batch_size, seed=seed)
    texture_counts = per_class_counts(predict(head, test_x), test_y, len(classes))
    real_counts = per_class_counts(predict(head, real_x), real_y, len(classes)) if real_x is not None else None
    real["samples"] = 0 if real_y is None else len(real_y)
    train_counts = np.bincount(train_y.numpy(), minlength=len(classes))
    body = texture_class_report(classes, texture_counts, real_counts, train_counts, top)
    out_dir.mkdir(parents=True, exist_ok=True)
    head_path = out_dir / "texture-probe.pt"
    save_linear_head(head_path, head, classes, features.arch, features.image_size, features.source)
    report = {
        "analysis": "texture-classes",
        "features": {"kind": features.kind, "description": features.description, "arch": features.arch,
                     "source": features.source, "image_size": features.image_size},
        "shards": str(shards), "split": split, "holdout": holdout, "epochs": epochs, "lr": lr, "seed": seed,
        "texture_train": len(train_y), "texture_held_out": len(test_y), "real": real,
        "top1": {"texture_held_out": top1(head, test_x, test_y),
                 "real": top1(head, real_x, real_y) if real_x is not None else None, "chance": 1 / len(classes)},
        **body,
        "fine_groups": {name: {"ancestor": ancestor, "imagenet_classes": len(members)}
                        for name, (ancestor, members) in FINE_GROUPS.items()},
        "fine_vs_rest": _fine_verdict(body["groups"]),
        "outputs": {**{name: str(out_dir / f"texture-classes.{name}") for name in ("md", "json", "png")},
                    "probe": str(head_path)},
    }
    plot_texture_classes(body["classes"], 1 / len(classes), out_dir / "texture-classes.png")
    write_report(out_dir, "texture-classes", report, _texture_markdown(report))
    return report


def terminal_summary(report: dict[str, Any], top: int) -> str:
    """What ``nsneg-analyze texture-classes`` prints: top-1s, the per-class table (or the most and
    least recognisable classes), the fine-vs-rest verdict and where the files went."""
    rows, chance = report["classes"], report["top1"]["chance"]
    lines = [f"top-1: held-out textures {percent(report['top1']['texture_held_out'])} "
             f"({report['texture_held_out']}), real {percent(report['top1']['real'])} ({report['real']['samples']}), "
             f"chance {percent(chance)}; probe trained on {report['texture_train']} textures"]
    by_wnid = {r["wnid"]: r for r in rows}
    if len(rows) <= 2 * top:
        ordered = sorted(rows, key=lambda r: (r["texture_acc"] is None, -(r["texture_acc"] or 0), r["wnid"]))
        lines.append(text_table(*class_table(ordered)))
    else:
        for title, wnids in (("most", report["most_recognisable"]), ("least", report["least_recognisable"])):
            lines.append(f"{title} recognisable from texture:\n{text_table(*class_table([by_wnid[w] for w in wnids]))}")
    lines.append(report["fine_vs_rest"])
    lines.append(f"wrote {report['outputs']['md']}, .json, .png and the probe {report['outputs']['probe']}")
    return "\n".join(lines)
