"""nsneg-analyze: the paper's two analyses of what a representation relies on.

``texture-classes``: how much of each class is recognisable from its texture alone. A
linear probe is trained on ImageNet-Texture samples (frozen features) and tested on
held-out textures and on real photos, per class; the classes most and least
recognisable from texture are listed, and fine-grained classes (the ImageNet dog
breeds) are compared with the rest.

``shape-bias``: the cue-conflict protocol of Geirhos et al. (ICLR 2019): images whose
shape comes from one category and texture from another; shape bias is the fraction of
shape decisions among the decisions that follow either cue. It reads the
texture-vs-shape stimuli, or makes a crude cue-conflict set from our own shards
(``--from-shards``) when those stimuli are not at hand.

Both read features through ``trainer.evaluate`` (eval view, feature extraction, probe),
and write a terminal table, Markdown, JSON and a PNG plot into ``--out-dir``.
"""
from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import click
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from pipeline import contract, files
from trainer import checkpoint
from trainer.evaluate import (
    IMAGENET_MEAN, IMAGENET_STD, LINEAR_LR, eval_transform, extract_features, load_dataset, resolve_device,
    load_linear_head, save_linear_head, top1, train_linear,
)

# --------------------------------------------------------------------------- class tables

#: WordNet ``dog, domestic dog, Canis familiaris``. Its hyponyms among the ImageNet-1k classes are
#: the 118 breeds n02085620 (Chihuahua) .. n02113978 (Mexican hairless): classes 151-268, a
#: contiguous range of the standard sorted wnid order (269, n02114367, is the timber wolf).
DOG_SYNSET = "n02084071"
DOG_BREEDS: tuple[str, ...] = tuple("""
n02085620 n02085782 n02085936 n02086079 n02086240 n02086646 n02086910 n02087046 n02087394 n02088094
n02088238 n02088364 n02088466 n02088632 n02089078 n02089867 n02089973 n02090379 n02090622 n02090721
n02091032 n02091134 n02091244 n02091467 n02091635 n02091831 n02092002 n02092339 n02093256 n02093428
n02093647 n02093754 n02093859 n02093991 n02094114 n02094258 n02094433 n02095314 n02095570 n02095889
n02096051 n02096177 n02096294 n02096437 n02096585 n02097047 n02097130 n02097209 n02097298 n02097474
n02097658 n02098105 n02098286 n02098413 n02099267 n02099429 n02099601 n02099712 n02099849 n02100236
n02100583 n02100735 n02100877 n02101006 n02101388 n02101556 n02102040 n02102177 n02102318 n02102480
n02102973 n02104029 n02104365 n02105056 n02105162 n02105251 n02105412 n02105505 n02105641 n02105855
n02106030 n02106166 n02106382 n02106550 n02106662 n02107142 n02107312 n02107574 n02107683 n02107908
n02108000 n02108089 n02108422 n02108551 n02108915 n02109047 n02109525 n02109961 n02110063 n02110185
n02110341 n02110627 n02110806 n02110958 n02111129 n02111277 n02111500 n02111889 n02112018 n02112137
n02112350 n02112706 n02113023 n02113186 n02113624 n02113712 n02113799 n02113978
""".split())

#: Fine-grained groups: name -> (WordNet ancestor, its ImageNet-1k member classes). Only what
#: the WordNet hierarchy makes unambiguous is listed; every other class counts as "rest".
FINE_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {"dog breeds": (DOG_SYNSET, DOG_BREEDS)}

#: The 16 entry-level categories of Geirhos et al. (ICLR 2019) -> the ImageNet-1k wnids whose
#: probabilities their decision code averages. Source: the ``<category>_indices`` lists of
#: rgeirhos/texture-vs-shape ``code/helper/human_categories.py``, used by
#: ``code/probabilities_to_decision.py`` (``ImageNetProbabilitiesTo16ClassesMapping``, np.mean);
#: identical in bethgelab/model-vs-human ``modelvshuman/helper/human_categories.py``. The indices
#: are written here as wnids of the standard sorted ILSVRC-2012 order. (Those files also hold
#: broader ``<category>`` wnid lists with synsets outside ILSVRC-2012; decisions use the indices.)
GEIRHOS_CATEGORIES: dict[str, tuple[str, ...]] = {name: tuple(wnids.split()) for name, wnids in {
    "airplane": "n02690373",
    "bear": "n02132136 n02133161 n02134084 n02134418",
    "bicycle": "n02835271 n03792782",
    "bird": """n01514859 n01530575 n01531178 n01532829 n01534433 n01537544 n01558993 n01560419 n01582220
               n01592084 n01601694 n01614925 n01616318 n01622779 n01795545 n01796340 n01797886 n01798484
               n01817953 n01818515 n01819313 n01820546 n01824575 n01828970 n01829413 n01833805 n01843065
               n01843383 n01855032 n01855672 n01860187 n02002556 n02002724 n02006656 n02007558 n02009229
               n02009912 n02011460 n02013706 n02017213 n02018207 n02018795 n02025239 n02027492 n02028035
               n02033041 n02037110 n02051845 n02056570""",
    "boat": "n02951358 n03344393 n03662601 n04273569 n04612504",
    "bottle": "n02823428 n03937543 n03983396 n04557648 n04560804 n04579145 n04591713",
    "car": "n02814533 n03100240 n04285008",
    "cat": "n02123045 n02123159 n02123394 n02123597 n02124075 n02125311",
    "chair": "n02791124 n03376595 n04099969 n04429376",
    "clock": "n02708093 n03196217 n04548280",
    # The 118 breeds without indices 151 (Chihuahua), 192, 204, 227, 242, 251, 258, 260, 264 (as in the source).
    "dog": " ".join(w for i, w in enumerate(DOG_BREEDS, start=151)
                    if i not in (151, 192, 204, 227, 242, 251, 258, 260, 264)),
    "elephant": "n02504013 n02504458",
    "keyboard": "n03085013 n04505470",
    "knife": "n03041632",
    "oven": "n04111531",
    "truck": "n03345487 n03417042 n03770679 n03796401 n03930630 n03977966 n04461696 n04467665",
}.items()}


def fine_group(wnid: str) -> str | None:
    """The fine-grained group (``FINE_GROUPS``) a class belongs to, or None."""
    return next((name for name, (_, members) in FINE_GROUPS.items() if wnid in members), None)


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
        sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
        self.register_buffer("sobel", torch.stack([sobel_x, sobel_x.T]).unsqueeze(1))  # [2, 1, 3, 3]
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
            gx, gy = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), self.sobel).unbind(dim=1)
            magnitude = torch.hypot(gx, gy).flatten(1)
            angle = torch.remainder(torch.atan2(gy, gx), torch.pi).flatten(1)
            index = (angle / torch.pi * self.BINS).long().clamp(max=self.BINS - 1)
            hist = torch.zeros(n, self.BINS, device=x.device).scatter_add_(1, index, magnitude)
            parts.append(hist / magnitude.shape[1])
        return torch.cat(parts, dim=1)


@dataclass
class Features:
    """A frozen feature extractor and how the report names it."""

    network: nn.Module
    image_size: int
    kind: str  # "checkpoint" or "pixels"
    description: str
    arch: str
    source: str


def load_checkpoint_backbone(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """``checkpoint.load_backbone`` with command-line errors (a missing, foreign or broken file)."""
    if not Path(path).is_file():
        raise click.ClickException(f"checkpoint {path} not found")
    try:
        return checkpoint.load_backbone(path)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    except Exception as e:
        raise click.ClickException(
            f"{path} is not a readable torch checkpoint ({type(e).__name__}: {str(e)[:200]})") from None


def load_features(checkpoint_path: Path | None, image_size: int | None) -> Features:
    """The checkpoint's frozen backbone (its training image size, else 224), or ``PixelStatistics``."""
    if checkpoint_path is None:
        return Features(PixelStatistics(), image_size or 224, "pixels", PixelStatistics.DESCRIPTION, "pixels", "pixels")
    backbone, config = load_checkpoint_backbone(checkpoint_path)
    arch = config.get("arch", "resnet50")
    size = image_size or int(config.get("image_size", 224))
    description = f"frozen {arch} backbone of {checkpoint_path}"
    return Features(backbone, size, "checkpoint", description, arch, str(checkpoint_path))


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


class ImageList(Dataset):
    """Images (paths or PIL images) in a given order; the target is the position in the list."""

    def __init__(self, images: Sequence[Path | Image.Image], transform: Callable):
        self.images, self.transform = list(images), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[i]
        if not isinstance(image, Image.Image):
            with Image.open(image) as f:
                image = f.convert("RGB")
        return self.transform(image), i


@torch.no_grad()
def predict(head: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    """The head's class index for every row (on the head's device, returned on the CPU)."""
    return head(features.to(head.weight.device).float()).argmax(dim=1).cpu()


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


# --------------------------------------------------------------------------- reporting


def _fmt(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table for the terminal."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _write_report(out_dir: Path, stem: str, report: dict[str, Any], markdown: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    files.atomic_write_json(out_dir / f"{stem}.json", report)
    files.atomic_write_bytes(out_dir / f"{stem}.md", (markdown.rstrip() + "\n").encode("utf-8"))


def _figure(width: float, height: float):
    """A matplotlib figure drawn with Agg, without touching pyplot's global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


# --------------------------------------------------------------------------- texture-classes


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
            f"{name} ({ancestor}): mean texture accuracy {_fmt(fine['mean_texture_acc'])} over {fine['tested']} "
            f"class(es) vs {_fmt(rest['mean_texture_acc'])} over {rest['tested']} other class(es) "
            f"({100 * diff:+.1f} points: "
            f"{name} are {'more' if diff > 0 else 'less' if diff < 0 else 'as'} recognisable from texture"
            f"{' than' if diff else ' as'} the rest).")
    return " ".join(sentences)


def plot_texture_classes(rows: list[dict[str, Any]], chance: float, path: Path) -> None:
    """Sorted bars of per-class held-out texture accuracy, fine-group classes in their own colour."""
    tested = sorted((r for r in rows if r["texture_acc"] is not None), key=lambda r: (-r["texture_acc"], r["wnid"]))
    fig = _figure(max(6.0, min(24.0, 0.25 * len(tested) + 2)), 4.5)
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
    fig.tight_layout()
    fig.savefig(path)


def class_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Headers and cells of per-class rows (real-image columns only when there were real images)."""
    has_real = bool(rows) and "real_acc" in rows[0]
    headers = ["class", "group", "train", "texture held-out", "n"] + (["real", "n"] if has_real else [])
    cells = [[r["wnid"], r["group"], r["train"], _fmt(r["texture_acc"]), r["texture_n"]]
             + ([_fmt(r["real_acc"]), r["real_n"]] if has_real else []) for r in rows]
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
        f"* top-1: held-out textures {_fmt(top1s['texture_held_out'])}, real {_fmt(top1s['real'])}, "
        f"chance {_fmt(top1s['chance'])} ({len(rows)} classes)", "",
        "## Fine-grained classes vs the rest", "", report["fine_vs_rest"], "",
        markdown_table(["group", "classes", "tested", "mean texture acc", "mean real acc", "texture / real"],
                       [[name, g["classes"], g["tested"], _fmt(g["mean_texture_acc"]), _fmt(g["mean_real_acc"]),
                         _fmt(g["texture_over_real"], percent=False)] for name, g in report["groups"].items()]), "",
        f"## Most recognisable from texture (top {len(most)})", "", markdown_table(*class_table(most)), "",
        f"## Least recognisable from texture (bottom {len(least)})", "", markdown_table(*class_table(least)), "",
        "## All classes", "", markdown_table(*class_table(rows)),
    ]
    return "\n".join(md)


# --------------------------------------------------------------------------- shape-bias: decisions


def covered_categories(head_classes: Sequence[str], categories: dict[str, Sequence[str]]) -> dict[str, list[int]]:
    """Category -> the head's class indices that belong to it, for the categories the head covers."""
    index = {wnid: i for i, wnid in enumerate(head_classes)}
    covered = {name: [index[w] for w in wnids if w in index] for name, wnids in categories.items()}
    return {name: idx for name, idx in covered.items() if idx}


def category_decisions(probabilities: torch.Tensor, covered: dict[str, list[int]]) -> list[str]:
    """Geirhos et al.'s decision: each category's probability is the mean of its classes' softmax
    probabilities (only the classes the head has), and the decision is the most probable category."""
    names = list(covered)
    scores = torch.stack([probabilities[:, covered[n]].mean(dim=1) for n in names], dim=1)
    return [names[i] for i in scores.argmax(dim=1).tolist()]


def cue_outcome(decision: str, shape: str, texture: str, covered: Sequence[str]) -> str:
    """``shape``, ``texture``, ``other``, or ``uncovered`` when the head cannot name one of the two cues
    (such an image could only ever follow the other cue, which would bias the count)."""
    if shape not in covered or texture not in covered:
        return "uncovered"
    return "shape" if decision == shape else "texture" if decision == texture else "other"


def shape_bias(outcomes: Sequence[str]) -> float | None:
    """Shape decisions / (shape + texture decisions); None when no decision followed either cue."""
    shape, texture = outcomes.count("shape"), outcomes.count("texture")
    return shape / (shape + texture) if shape + texture else None


@dataclass
class CueImage:
    name: str
    shape: str
    texture: str
    image: Path | Image.Image


_CUE_NAME = re.compile(r"^(?P<shape>[a-z]+)\d+-(?P<texture>[a-z]+)\d+\.png$", re.IGNORECASE)


def read_cue_conflict_dir(root: Path, categories: Sequence[str]) -> tuple[list[CueImage], dict[str, list[str]]]:
    """``DIR/<shape>/<shape><n>-<texture><m>.png`` (rgeirhos/texture-vs-shape stimuli) -> the images to
    score, and the files left out by reason: same category for both cues, unparsable name, unknown category."""
    images, left_out = [], {"same category": [], "unparsable name": [], "unknown category": []}
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file() or path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        name = str(path.relative_to(root))
        match = _CUE_NAME.match(path.name)
        if match is None:
            left_out["unparsable name"].append(name)
            continue
        shape, texture = match["shape"].lower(), match["texture"].lower()
        if shape not in categories or texture not in categories:
            left_out["unknown category"].append(name)
        elif shape == texture:
            left_out["same category"].append(name)
        else:
            images.append(CueImage(name, shape, texture, path))
    return images, left_out


# --------------------------------------------------------------------------- shape-bias: cue conflict from shards


def centre_view(image: Image.Image, size: int) -> Image.Image:
    """Short side to ``size``, centre crop ``size`` x ``size``: the whole object, as the eval view sees it."""
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    resized = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def edge_mask(image: Image.Image, quantile: float = 0.9, radius: int | None = None) -> np.ndarray:
    """Where ``image`` has its strongest edges: Sobel magnitude of the lightly blurred grey image at or
    above its ``quantile``, dilated by a disc of ``radius`` px (default: size / 28, 8 px at 224). Contours
    and textured parts of an object fall inside; smooth areas (much of the background) do not."""
    grey = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255)[None, None]
    grey = F.avg_pool2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    gx, gy = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), torch.stack([sobel_x, sobel_x.T])[:, None]).unbind(1)
    magnitude = torch.hypot(gx, gy)[0]
    edges = (magnitude >= torch.quantile(magnitude.flatten(), quantile)) & (magnitude > 0)
    radius = max(1, min(image.size) // 28) if radius is None else radius
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    disc = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).float()[None, None]
    return (F.conv2d(edges[None, None].float(), disc, padding=radius)[0, 0] > 0.5).numpy()


def cue_conflict_image(shape_image: Image.Image, texture_image: Image.Image, size: int = contract.TEXTURE_SIZE
                       ) -> tuple[Image.Image, np.ndarray]:
    """A's photo (centre view) with its edge region (``edge_mask``) filled by B's texture, and the mask.
    Shape cue: A's contours and layout; texture cue: B's texture where A had its edges and detail."""
    a = np.asarray(centre_view(shape_image, size))
    b = np.asarray(centre_view(texture_image, size))
    mask = edge_mask(Image.fromarray(a))
    return Image.fromarray(np.where(mask[..., None], b, a)), mask


def cue_conflict_from_shards(root: Path, split: str, head_classes: Sequence[str], n: int, seed: int,
                             out_dir: Path) -> tuple[list[CueImage], list[dict[str, Any]]]:
    """``n`` (shape A, texture B) pairs of samples of different classes the head knows, drawn with ``seed``;
    writes each image as ``out_dir/<A wnid>/<i>_<A wnid>-<B wnid>.png`` and returns the images and their records."""
    manifest = contract.load_manifest(root)
    if not manifest.get("has_source"):
        raise click.ClickException(f"{root} holds textures only (built with --no-source): no photo gives the shape cue")
    classes, known = manifest["classes"], set(head_classes)
    paths = contract.shard_paths(root, split, manifest)
    index = [(raw["__key__"], int(raw[contract.CLASS_FIELD])) for raw in contract.iter_raw(paths)]  # no decoding
    index = [(key, cls) for key, cls in index if classes[cls] in known]
    if len({cls for _, cls in index}) < 2:
        raise click.ClickException(f"{root} split {split!r} needs samples of at least two classes the head knows")
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        a = b = index[int(rng.integers(len(index)))]
        while b[1] == a[1]:  # B: uniform over the samples of the other classes (rejection; two classes exist)
            b = index[int(rng.integers(len(index)))]
        pairs.append((a, b))
    needed = {key for pair in pairs for key, _ in pair}
    samples = {raw["__key__"]: contract.decode_sample(raw)
               for raw in contract.iter_raw(paths) if raw["__key__"] in needed}
    images, records, sheet_rows = [], [], []
    for i, ((key_a, cls_a), (key_b, cls_b)) in enumerate(pairs):
        a, b = samples[key_a].source(), samples[key_b].texture
        image, mask = cue_conflict_image(a, b)
        shape, texture = classes[cls_a], classes[cls_b]
        name = f"{shape}/{i:04d}_{shape}-{texture}.png"
        (out_dir / shape).mkdir(parents=True, exist_ok=True)
        files.atomic_write_bytes(out_dir / name, files.png_bytes(np.asarray(image)))
        images.append(CueImage(name, shape, texture, image))
        records.append({"file": name, "shape": shape, "shape_key": key_a, "texture": texture, "texture_key": key_b,
                        "mask_fraction": round(float(mask.mean()), 4)})
        if i < 8:
            tiles = [a, b, Image.fromarray(mask).convert("RGB"), image]
            sheet_rows.append((f"shape {shape}  texture {texture}", tiles))
    files.atomic_write_bytes(out_dir / "contact-sheet.png", files.png_bytes(contact_sheet(sheet_rows)))
    return images, records


def contact_sheet(rows: list[tuple[str, list[Image.Image]]], thumb: int = 112) -> Image.Image:
    """Captioned rows of images ([A photo | B texture | mask | cue-conflict image]) for a look at what was made."""
    sheet = Image.new("RGB", (max(len(tiles) for _, tiles in rows) * thumb, len(rows) * (thumb + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (caption, tiles) in enumerate(rows):
        y = row * (thumb + 14)
        draw.text((2, y), caption, fill="black")
        for col, tile in enumerate(tiles):
            sheet.paste(centre_view(tile, thumb), (col * thumb, y + 14))
    return sheet


def plot_shape_bias(counts: dict[str, int], per_category: dict[str, dict[str, Any]], bias: float | None,
                    path: Path) -> None:
    """Decision counts, and shape bias per shape category (Geirhos et al.'s per-category view)."""
    fig = _figure(10, 4)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = ["shape", "texture", "other", "uncovered"]
    left.bar(names, [counts[n] for n in names], color=["tab:blue", "tab:orange", "tab:grey", "lightgrey"])
    left.set_ylabel("images")
    left.set_title(f"decisions (shape bias {_fmt(bias)})")
    cats = [c for c, v in per_category.items() if v["shape_bias"] is not None]
    right.barh(cats, [100 * per_category[c]["shape_bias"] for c in cats], color="tab:blue")
    right.set_xlim(0, 100)
    right.axvline(50, color="grey", linestyle="--", linewidth=1)
    right.set_xlabel("shape bias (%) by shape category")
    fig.tight_layout()
    fig.savefig(path)


# --------------------------------------------------------------------------- command line


@click.group()
def main() -> None:
    """What a representation relies on: texture-recognisable classes and cue-conflict shape bias."""


def _common_options(command: Callable) -> Callable:
    options = [
        click.option("--image-size", type=click.IntRange(1), default=None,
                     help="centre crop size [default: the checkpoint's (or head's) training size, else 224]"),
        click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True),
        click.option("--workers", type=click.IntRange(0), default=2, show_default=True, help="DataLoader workers"),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ..."),
        click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("analysis"),
                     show_default=True, help="where the Markdown, JSON and PNG go"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _extract(network: nn.Module, dataset: Dataset, batch_size: int, workers: int, device: torch.device,
             desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    return extract_features(network, loader, device, desc)


@main.command("texture-classes")
@click.option("--shards", "shards", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="ImageNet-Texture shard directory")
@click.option("--split", default="train", show_default=True, help="shard split to read")
@click.option("--val", "val_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="real images: an ImageFolder tree DIR/<wnid>/<image> or a shard directory [default: the shards' "
                   "own source photos of the held-out keys]")
@click.option("--val-split", default="val", show_default=True, help="split read when --val is a shard directory")
@click.option("--checkpoint", "checkpoint_path", type=click.Path(path_type=Path),
              help="features: this checkpoint's frozen backbone (nsneg or released MoCo .pth.tar)")
@click.option("--features", "feature_kind", type=click.Choice(["pixels"]), default=None,
              help="features without a checkpoint (the default then): colour and gradient statistics, no weights")
@click.option("--holdout", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True,
              help="fraction of textures held out of probe training (by key hash)")
@click.option("--epochs", type=click.IntRange(1), default=60, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=LINEAR_LR, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="probe seed")
@click.option("--top", type=click.IntRange(1), default=10, show_default=True, help="classes in the most/least lists")
@_common_options
def texture_classes(shards: Path, split: str, val_dir: Path | None, val_split: str, checkpoint_path: Path | None,
                    feature_kind: str | None, holdout: float, epochs: int, lr: float, seed: int, top: int,
                    image_size: int | None, batch_size: int, workers: int, device: str, out_dir: Path) -> None:
    """Per-class accuracy of a linear probe trained on textures: on held-out textures and on real images."""
    if checkpoint_path is not None and feature_kind is not None:
        raise click.UsageError("give --checkpoint or --features pixels, not both")
    torch_device = resolve_device(device)
    try:
        manifest = contract.load_manifest(shards)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if split not in manifest["splits"]:
        raise click.ClickException(f"{shards} has no split {split!r} (it has {sorted(manifest['splits'])})")
    classes: list[str] = list(manifest["classes"])
    features = load_features(checkpoint_path, image_size)
    click.echo(f"features: {features.description} (image size {features.image_size})")
    transform = eval_transform(features.image_size)

    def views(view: str, held_out: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        dataset = ShardViews(shards, split, view, held_out, holdout, transform)
        try:
            return _extract(features.network, dataset, batch_size, workers, torch_device, desc)
        except ValueError as e:
            if not str(e).startswith("no images"):
                raise
            side = "held-out" if held_out else "training"
            raise click.ClickException(f"{shards} split {split!r} has no {side} textures with --holdout {holdout}: "
                                       "use more samples or another fraction") from None

    train_x, train_y = views("texture", False, "train textures")
    test_x, test_y = views("texture", True, "held-out textures")
    real: dict[str, Any] = {"source": None, "samples": 0, "dropped_classes": []}
    real_x = real_y = None
    if val_dir is not None:
        try:
            val_set, val_classes = load_dataset(val_dir, val_split, features.image_size)
        except (FileNotFoundError, ValueError) as e:
            raise click.ClickException(str(e)) from None
        val_x, val_y = _extract(features.network, val_set, batch_size, workers, torch_device, "real images")
        to_shard = torch.tensor([classes.index(c) if c in classes else -1 for c in val_classes])
        mapped = to_shard[val_y]
        real_x, real_y = val_x[mapped >= 0], mapped[mapped >= 0]
        real.update(source=f"--val {val_dir}", dropped_classes=sorted(set(val_classes) - set(classes)))
        if real["dropped_classes"]:
            click.echo(f"note: {len(real['dropped_classes'])} --val classes are not in the shards and are left out: "
                       f"{real['dropped_classes'][:5]}")
        if len(real_y) == 0:
            raise click.ClickException(f"no --val image belongs to a class of {shards}")
    elif manifest.get("has_source"):
        real_x, real_y = views("source", True, "held-out source photos")
        real["source"] = "the shards' source photos of the held-out keys"
    else:
        click.echo("note: the shards hold no source photos and no --val was given: no real-image accuracy")

    head = train_linear(train_x.to(torch_device), train_y, len(classes), epochs=epochs, lr=lr,
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
    _write_report(out_dir, "texture-classes", report, _texture_markdown(report))

    click.echo(f"top-1: held-out textures {_fmt(report['top1']['texture_held_out'])} ({len(test_y)}), real "
               f"{_fmt(report['top1']['real'])} ({real['samples']}), chance {_fmt(1 / len(classes))}; "
               f"probe trained on {len(train_y)} textures")
    by_wnid = {r["wnid"]: r for r in body["classes"]}
    if len(classes) <= 2 * top:
        rows = sorted(body["classes"], key=lambda r: (r["texture_acc"] is None, -(r["texture_acc"] or 0), r["wnid"]))
        click.echo(text_table(*class_table(rows)))
    else:
        for title, wnids in (("most", body["most_recognisable"]), ("least", body["least_recognisable"])):
            click.echo(f"{title} recognisable from texture:\n{text_table(*class_table([by_wnid[w] for w in wnids]))}")
    click.echo(report["fine_vs_rest"])
    click.echo(f"wrote {out_dir / 'texture-classes.md'}, .json, .png and the probe {head_path}")


@main.command("shape-bias")
@click.option("--checkpoint", "checkpoint_path", required=True, type=click.Path(path_type=Path),
              help="nsneg checkpoint or released MoCo .pth.tar")
@click.option("--linear-head", "head_path", required=True, type=click.Path(path_type=Path),
              help="its linear head over ImageNet wnids (nsneg-eval linear --out)")
@click.option("--cue-conflict", "cue_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="texture-vs-shape stimuli: DIR/<shape>/<shape><n>-<texture><m>.png over the 16 categories")
@click.option("--from-shards", "shards", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="make a cue-conflict set from this shard directory instead (shape: a photo, texture: another "
                   "class's texture); classes are the head's own")
@click.option("--split", default="train", show_default=True, help="shard split read by --from-shards")
@click.option("--n", "n_pairs", type=click.IntRange(1), default=200, show_default=True,
              help="images made by --from-shards")
@click.option("--seed", type=int, default=0, show_default=True, help="pair sampling of --from-shards")
@_common_options
def shape_bias_command(checkpoint_path: Path, head_path: Path, cue_dir: Path | None, shards: Path | None, split: str,
                       n_pairs: int, seed: int, image_size: int | None, batch_size: int, workers: int, device: str,
                       out_dir: Path) -> None:
    """Shape bias on cue-conflict images: shape decisions / (shape + texture decisions)."""
    if (cue_dir is None) == (shards is None):
        raise click.UsageError("give exactly one of --cue-conflict DIR or --from-shards DIR")
    torch_device = resolve_device(device)
    try:
        head, head_info = load_linear_head(head_path)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    backbone, config = load_checkpoint_backbone(checkpoint_path)
    size = image_size or int(head_info.get("image_size") or config.get("image_size", 224))
    head_classes: list[str] = list(head_info["classes"])
    with torch.no_grad():
        feature_dim = backbone(torch.zeros(1, 3, size, size)).shape[1]
    if feature_dim != head.in_features:
        raise click.ClickException(f"the head takes {head.in_features} features, the backbone gives {feature_dim}: "
                                   "was it trained on another checkpoint's architecture?")

    if cue_dir is not None:
        mode, categories = "geirhos-16", GEIRHOS_CATEGORIES
        images, left_out = read_cue_conflict_dir(cue_dir, list(categories))
        made: list[dict[str, Any]] = []
        source = str(cue_dir)
    else:
        mode, categories = "shard-classes", {wnid: (wnid,) for wnid in head_classes}
        made_dir = out_dir / "cue-conflict-from-shards"
        images, made = cue_conflict_from_shards(shards, split, head_classes, n_pairs, seed, made_dir)
        left_out = {"same category": []}
        source = f"{n_pairs} images made from {shards} (split {split}, seed {seed}) in {made_dir}"
    if not images:
        raise click.ClickException(f"no cue-conflict images to score in {cue_dir} (left out: "
                                   f"{ {k: len(v) for k, v in left_out.items()} })")
    covered = covered_categories(head_classes, categories)
    if not covered:
        raise click.ClickException(f"the head's {len(head_classes)} classes cover none of the {mode} categories")

    dataset = ImageList([im.image for im in images], eval_transform(size))
    features, _ = _extract(backbone, dataset, batch_size, workers, torch_device, "cue-conflict images")
    head = head.to(torch_device)
    with torch.no_grad():
        probabilities = head(features.to(torch_device)).softmax(dim=1).cpu()
    decisions = category_decisions(probabilities, covered)
    outcomes = [cue_outcome(d, im.shape, im.texture, list(covered)) for d, im in zip(decisions, images)]
    counts = {k: outcomes.count(k) for k in ("shape", "texture", "other", "uncovered")}
    bias = shape_bias(outcomes)
    per_category = {}
    for name in sorted({im.shape for im in images}):
        own = [o for o, im in zip(outcomes, images) if im.shape == name]
        per_category[name] = {"images": len(own), "shape": own.count("shape"), "texture": own.count("texture"),
                              "shape_bias": shape_bias(own)}

    total_categories = len(categories)
    decided = counts["shape"] + counts["texture"]
    warnings = []
    if mode == "geirhos-16" and len(covered) < total_categories:
        warnings.append(f"the head covers only {len(covered)} of the 16 categories ({', '.join(covered)}): decisions "
                        "are among those only, images with an uncovered cue are left out, and few categories make "
                        "this shape bias a weak number (Geirhos et al.'s models cover all 16)")
    if decided < 20:
        warnings.append(f"only {decided} decisions followed either cue: the number is noisy")
    report = {
        "analysis": "shape-bias", "mode": mode, "source": source, "checkpoint": str(checkpoint_path),
        "linear_head": str(head_path), "image_size": size, "head_classes": len(head_classes),
        "shape_bias": bias, "counts": counts, "images": len(images),
        "left_out": {k: len(v) for k, v in left_out.items()},
        "covered_categories": {name: [head_classes[i] for i in idx] for name, idx in covered.items()},
        "categories_covered": len(covered), "categories_total": total_categories,
        "category_source": ("Geirhos et al. 2019, rgeirhos/texture-vs-shape code/helper/human_categories.py "
                            "(<category>_indices), mean probability per category" if mode == "geirhos-16"
                            else "the linear head's own classes"),
        "per_shape_category": per_category, "warnings": warnings,
        "decisions": [{"file": im.name, "shape": im.shape, "texture": im.texture, "decision": d, "outcome": o}
                      for im, d, o in zip(images, decisions, outcomes)],
        "made": made,
        "outputs": {name: str(out_dir / f"shape-bias.{name}") for name in ("md", "json", "png")},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_shape_bias(counts, per_category, bias, out_dir / "shape-bias.png")
    _write_report(out_dir, "shape-bias", report, _shape_markdown(report))
    click.echo(text_table(["", "value"], _shape_summary(report)))
    for warning in warnings:
        click.echo(f"warning: {warning}")
    click.echo(f"wrote {out_dir / 'shape-bias.md'}, .json, .png")


def _shape_summary(report: dict[str, Any]) -> list[list[Any]]:
    counts = report["counts"]
    return [["shape bias", _fmt(report["shape_bias"])], ["shape decisions", counts["shape"]],
            ["texture decisions", counts["texture"]], ["other decisions", counts["other"]],
            ["uncovered (left out)", counts["uncovered"]],
            ["same category (skipped)", report["left_out"].get("same category", 0)],
            ["categories covered", f"{report['categories_covered']} / {report['categories_total']}"]]


def _shape_markdown(report: dict[str, Any]) -> str:
    covered = [[c, " ".join(w)] for c, w in report["covered_categories"].items()]
    per_category = [[c, v["images"], v["shape"], v["texture"], _fmt(v["shape_bias"])]
                    for c, v in report["per_shape_category"].items()]
    md = ["# Shape bias (cue conflict)", "", f"* images: {report['source']}",
          f"* checkpoint `{report['checkpoint']}`, head `{report['linear_head']}` ({report['head_classes']} classes), "
          f"image size {report['image_size']}", f"* categories: {report['category_source']}", "",
          markdown_table(["", "value"], _shape_summary(report)), "",
          "## Covered categories", "", markdown_table(["category", "head classes"], covered), "",
          "## By shape category", "",
          markdown_table(["shape category", "images", "shape", "texture", "shape bias"], per_category)]
    if report["warnings"]:
        md += ["", "## Warnings", "", *[f"* {w}" for w in report["warnings"]]]
    return "\n".join(md)
