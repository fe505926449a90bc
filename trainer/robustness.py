"""Out-of-domain top-1 of a frozen encoder and its linear head (``nsneg-eval robustness``).

Sets: ImageNet(-100) val, ImageNet-C (a released tree ``DIR/<corruption>/<severity>/<wnid>/*``,
or generated from the val images with ``trainer.corruptions``), ImageNet-Sketch, ImageNet-R
and Stylized-ImageNet (``DIR/<wnid>/*``). Every set is restricted to the classes the head was
trained on, matched by wnid folder name; a class a set lacks is simply absent (ImageNet-R has
200 classes). Predictions are the argmax over the head's classes.

Generated ImageNet-C follows the released set: the corruption is applied to the 224 x 224
centre crop of ``Resize(256)``, and the result goes through the same resize, crop and
normalisation as a released file would (``eval_transform`` of the head's image size).
Each image's randomness is seeded by its path ``<wnid>/<file>`` (``image_seed``), so a run
is reproducible and every severity sees the same random field.
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import click
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms
from tqdm import tqdm

from trainer import checkpoint
from trainer.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from trainer.evaluate import write_json, eval_transform, extract_features, load_linear_head, top1

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


def load_model(checkpoint_path: Path, head_path: Path) -> Model:
    """Backbone and head, checked to belong together; every problem is a ValueError that says which file."""
    if not checkpoint_path.is_file():
        raise ValueError(f"checkpoint {checkpoint_path} not found")
    try:
        backbone, config = checkpoint.load_backbone(checkpoint_path)
    except ValueError:  # a foreign checkpoint: the message names the file and what was expected
        raise
    except Exception as e:
        raise ValueError(f"{checkpoint_path} is not a readable torch checkpoint "
                         f"({type(e).__name__}: {str(e)[:200]})") from None
    try:
        head, info = load_linear_head(head_path)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    arch = config.get("arch", "resnet50")
    if info.get("arch") != arch:
        raise ValueError(f"linear head {head_path} was trained on {info.get('arch')} features, "
                         f"but checkpoint {checkpoint_path} is a {arch}")
    # Released MoCo checkpoints record no image size; ours do, and the head must have used it.
    if "image_size" in config and int(info.get("image_size", -1)) != int(config["image_size"]):
        raise ValueError(f"linear head {head_path} was trained at {info.get('image_size')} px, "
                         f"but checkpoint {checkpoint_path} was trained at {config['image_size']} px")
    return Model(backbone.eval(), head, list(info["classes"]), arch, int(info["image_size"]),
                 str(info.get("checkpoint", "")))


@torch.no_grad()
def logits(model: Model, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Head logits of a normalised batch, computed as ``extract_features`` then ``top1`` would."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        features = model.backbone(images.to(device))
    return model.head(features.float())


# --------------------------------------------------------------------------- data


def image_seed(relative_path: str) -> int:
    """The corruption seed of an image: CRC-32 of its ``<wnid>/<file>`` path (stable across runs)."""
    return zlib.crc32(relative_path.encode("utf-8"))


class WnidFolder(Dataset):
    """The images of ``root/<wnid>/*`` for the wnids in ``classes``, labelled with their index there.

    ``max_per_class`` keeps the first N files (sorted) of each class."""

    def __init__(self, root: Path, classes: Sequence[str], transform: Callable, max_per_class: int | None = None):
        self.root, self.transform = Path(root), transform
        present = {wnid: i for i, wnid in enumerate(classes) if (self.root / wnid).is_dir()}
        samples = datasets.folder.make_dataset(str(self.root), present, extensions=datasets.folder.IMG_EXTENSIONS,
                                               allow_empty=True) if present else []
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
        crop = transforms.Compose([transforms.Resize(C_RESIZE), transforms.CenterCrop(C_CROP), transforms.ToTensor()])
        super().__init__(root, classes, crop, max_per_class)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, label = super().__getitem__(index)
        return image, label, image_seed(Path(self.samples[index][0]).relative_to(self.root).as_posix())


def tensor_view(image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``eval_transform``'s resize, crop and normalisation, for batches already in [0, 1]."""
    return transforms.Compose([t for t in eval_transform(image_size).transforms
                               if not isinstance(t, transforms.ToTensor)])


def _loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")


# --------------------------------------------------------------------------- evaluation


def evaluate_folder(model: Model, root: Path, device: torch.device, batch_size: int = 128, workers: int = 2,
                    max_per_class: int | None = None, desc: str = "features") -> dict[str, Any]:
    """Top-1 on ``root/<wnid>/*`` (None when it shares no class with the head), with the counts."""
    dataset = WnidFolder(root, model.classes, eval_transform(model.image_size), max_per_class)
    result: dict[str, Any] = {"path": str(root), "top1": None, "classes": dataset.classes_found,
                              "images": len(dataset)}
    if len(dataset):
        features, labels = extract_features(model.backbone, _loader(dataset, batch_size, workers, device), device, desc)
        result["top1"] = top1(model.head.to(device), features, labels)
    return result


def evaluate_generated_c(model: Model, val_root: Path, corruptions: Sequence[str], severities: Sequence[int],
                         device: torch.device, batch_size: int = 128, workers: int = 2,
                         max_per_class: int | None = None) -> dict[tuple[str, int], dict[str, Any]]:
    """Top-1 on every (corruption, severity) of the val images, decoding each image once."""
    dataset = SeededCrops(val_root, model.classes, max_per_class)
    view = tensor_view(model.image_size)
    model.backbone.to(device)
    model.head.to(device)
    correct = {(name, s): 0 for name in corruptions for s in severities}
    for images, labels, seeds in tqdm(_loader(dataset, batch_size, workers, device), unit="batch", leave=False,
                                      desc=f"ImageNet-C ({len(correct)} variants)"):
        images, labels, seeds = images.to(device), labels.to(device), seeds.tolist()
        for name, s in correct:
            predicted = logits(model, view(corrupt(images, name, s, seeds)), device).argmax(dim=1)
            correct[name, s] += int((predicted == labels).sum())
    return {key: {"path": f"generated from {val_root}", "top1": n / len(dataset) if len(dataset) else None,
                  "classes": dataset.classes_found, "images": len(dataset)} for key, n in correct.items()}


def evaluate_c_tree(model: Model, root: Path, corruptions: Sequence[str], severities: Sequence[int],
                    device: torch.device, **loader: Any) -> dict[tuple[str, int], dict[str, Any]]:
    """Top-1 on every ``root/<corruption>/<severity>`` of a released ImageNet-C tree."""
    missing = [f"{name}/{s}" for name in corruptions for s in severities if not (root / name / str(s)).is_dir()]
    if missing:
        raise ValueError(f"ImageNet-C tree {root} lacks {len(missing)} of the requested corruption/severity "
                         f"folders ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); "
                         "choose the ones it has with --corruptions / --severities")
    return {(name, s): evaluate_folder(model, root / name / str(s), device, desc=f"{name} {s}", **loader)
            for name in corruptions for s in severities}


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def imagenet_c_summary(variants: dict[tuple[str, int], dict[str, Any]], source: str) -> dict[str, Any]:
    """Per corruption: each severity's result and their mean top-1; overall: the mean of those means."""
    corruptions: dict[str, Any] = {}
    for (name, s), result in variants.items():
        corruptions.setdefault(name, {"severities": {}})["severities"][str(s)] = result
    for entry in corruptions.values():
        entry["mean"] = _mean([r["top1"] for r in entry["severities"].values()])
    severities = sorted({s for _, s in variants})
    return {"source": source, "severities": severities, "corruptions": corruptions,
            "mean": _mean([entry["mean"] for entry in corruptions.values()])}


def evaluate_all(model: Model, val: Path, device: torch.device, ood: dict[str, Path], imagenet_c: Path | None,
                 corruptions: Sequence[str], severities: Sequence[int], **loader: Any) -> dict[str, Any]:
    """Every set's result, keyed as in the JSON report (``sets`` and ``imagenet_c``)."""
    sets = {"val": evaluate_folder(model, val, device, desc="val", **loader)}
    if not sets["val"]["images"]:
        raise ValueError(f"{val} holds none of the head's {len(model.classes)} classes "
                         f"({', '.join(model.classes[:3])}, ...) as DIR/<wnid>/<image> folders")
    for key, root in ood.items():
        sets[key] = evaluate_folder(model, root, device, desc=key, **loader)
    report: dict[str, Any] = {"sets": sets}
    if corruptions:
        if imagenet_c is None:
            variants = evaluate_generated_c(model, val, corruptions, severities, device, **loader)
        else:
            variants = evaluate_c_tree(model, imagenet_c, corruptions, severities, device, **loader)
        report["imagenet_c"] = imagenet_c_summary(variants, "generated" if imagenet_c is None else str(imagenet_c))
    return report


# --------------------------------------------------------------------------- report


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _rows(report: dict[str, Any]) -> dict[str, tuple[float | None, int]]:
    """Comparison rows of a report: title -> (top-1, images behind it)."""
    rows = {SET_TITLES[key]: (result["top1"], result["images"]) for key, result in report["sets"].items()}
    c = report.get("imagenet_c")
    if c:
        total = sum(r["images"] for entry in c["corruptions"].values() for r in entry["severities"].values())
        rows["ImageNet-C mean"] = (c["mean"], total)
        for name in CORRUPTIONS:
            if name in c["corruptions"]:
                entry = c["corruptions"][name]
                rows[f"C: {name}"] = (entry["mean"], sum(r["images"] for r in entry["severities"].values()))
    return rows


def _row_order(reports: Sequence[dict[str, Any]]) -> list[str]:
    seen = [title for report in reports for title in _rows(report)]
    canonical = [*SET_TITLES.values(), "ImageNet-C mean", *(f"C: {name}" for name in CORRUPTIONS)]
    return [title for title in canonical if title in seen]


def _span(values: Iterable[int]) -> str:
    values = list(values)
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def markdown(reports: Sequence[dict[str, Any]]) -> str:
    """The first report against the others (top-1 %), then its counts and its ImageNet-C per severity."""
    report = reports[0]
    per_report = [_rows(r) for r in reports]
    comparison, differing = [], False
    for title in _row_order(reports):
        cells = [rows.get(title) for rows in per_report]
        sizes = {cell[1] for cell in cells if cell is not None}
        mark = " *" if len(sizes) > 1 else ""
        differing |= bool(mark)
        comparison.append([title + mark, *("–" if cell is None else _pct(cell[0]) for cell in cells)])
    lines = [f"# Robustness of {report['name']}", "",
             f"Linear head on frozen {report['arch']} features at {report['image_size']} px, "
             f"{report['head_classes']} classes. Top-1 (%):", "",
             *_table(["Set", *(r["name"] for r in reports)], comparison)]
    if differing:
        lines += ["", "\\* the checkpoints were evaluated on different numbers of images here."]
    counts = [[f"{SET_TITLES[key]} ({r['path']})", str(r["classes"]), str(r["images"]), _pct(r["top1"])]
              for key, r in report["sets"].items()]
    lines += ["", f"## Sets of {report['name']}", "", *_table(["Set", "Classes", "Images", "Top-1 (%)"], counts)]
    c = report.get("imagenet_c")
    if c:
        rows = []
        for name in CORRUPTIONS:
            if name in c["corruptions"]:
                entry = c["corruptions"][name]
                rows.append([name, *(_pct(entry["severities"][str(s)]["top1"]) for s in c["severities"]),
                             _pct(entry["mean"])])
        rows.append(["**mean**", *[""] * len(c["severities"]), f"**{_pct(c['mean'])}**"])
        variants = [r for entry in c["corruptions"].values() for r in entry["severities"].values()]
        lines += ["", f"## ImageNet-C of {report['name']} ({c['source']}), top-1 (%)", "",
                  f"Classes per variant: {_span(r['classes'] for r in variants)}; "
                  f"images per variant: {_span(r['images'] for r in variants)}.", "",
                  *_table(["Corruption", *map(str, c["severities"]), "Mean"], rows)]
    return "\n".join(lines) + "\n"


def plot(reports: Sequence[dict[str, Any]], path: Path) -> None:
    """Grouped bars, one colour per checkpoint: the sets and ImageNet-C mean on top, each corruption below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_report = [_rows(r) for r in reports]
    titles = _row_order(reports)
    panels = [t for t in [[t for t in titles if not t.startswith("C: ")], [t for t in titles if t.startswith("C: ")]]
              if t]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 0.45 * len(reports) * max(map(len, panels)) + 2),
                                                      3.6 * len(panels)), squeeze=False)
    width = 0.8 / len(reports)
    for ax, panel in zip(axes[:, 0], panels):
        for i, (report, rows) in enumerate(zip(reports, per_report)):
            values = [100 * rows[t][0] if t in rows and rows[t][0] is not None else math.nan for t in panel]
            bars = ax.bar([j + (i - (len(reports) - 1) / 2) * width for j in range(len(panel))], values, width,
                          label=report["name"])
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(panel)), [t.removeprefix("C: ") for t in panel], rotation=30, ha="right")
        ax.set_ylabel("top-1 (%)")
        ax.set_ylim(0, 108)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title(f"Robustness: linear head top-1, {reports[0]['head_classes']} classes")
    axes[0, 0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- command line


def parse_corruptions(text: str) -> list[str]:
    """``all``, ``none``, or comma-separated names from ``trainer.corruptions.CORRUPTIONS``."""
    if text.strip() == "all":
        return list(CORRUPTIONS)
    if text.strip() == "none":
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise click.BadParameter(f"unknown corruption(s) {', '.join(unknown) or repr(text)}; "
                                 f"use all, none or some of: {', '.join(CORRUPTIONS)}", param_hint="--corruptions")
    return list(dict.fromkeys(names))


def parse_severities(text: str) -> list[int]:
    try:
        severities = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        severities = []
    if not severities or not set(severities) <= set(SEVERITIES):
        raise click.BadParameter(f"expected comma-separated severities from 1 to 5, got {text!r}",
                                 param_hint="--severities")
    return severities


def default_name(checkpoint_path: Path) -> str:
    """A checkpoint's label: its run directory for ``runs/<name>/checkpoint.pt``, else its file name."""
    name = checkpoint_path.name
    for suffix in (".pth.tar", ".tar", ".pth", ".pt"):
        name = name.removesuffix(suffix)
    return checkpoint_path.resolve().parent.name if name.startswith("checkpoint") else name


def load_report(path: Path) -> dict[str, Any]:
    """An earlier robustness.json, for ``--compare``."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise click.BadParameter(f"{path} is not readable JSON ({e})", param_hint="--compare") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise click.BadParameter(f"{path} is not a robustness.json written by nsneg-eval robustness",
                                 param_hint="--compare")
    return report


def _unique_names(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Column labels must differ: a repeated name gets ' (2)', ' (3)', ..."""
    seen: dict[str, int] = {}
    out = []
    for report in reports:
        n = seen[report["name"]] = seen.get(report["name"], 0) + 1
        out.append(report if n == 1 else {**report, "name": f"{report['name']} ({n})"})
    return out


def command(checkpoint_path: Path, head_path: Path, imagenet_val: Path, imagenet_c: Path | None,
            sketch: Path | None, rendition: Path | None, stylized: Path | None, corruptions: str,
            severities: str, max_per_class: int | None, compare: Sequence[Path], name: str | None,
            out_dir: Path | None, batch_size: int, workers: int, device: torch.device) -> None:
    """Body of ``nsneg-eval robustness``: evaluate, print the table, write robustness.{md,json,png}."""
    names, levels = parse_corruptions(corruptions), parse_severities(severities)
    others = [load_report(p) for p in compare]
    try:
        model = load_model(checkpoint_path, head_path)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    name = name or default_name(checkpoint_path)
    ood = {key: root for key, root in (("sketch", sketch), ("rendition", rendition), ("stylized", stylized))
           if root is not None}
    try:
        results = evaluate_all(model, imagenet_val, device, ood, imagenet_c, names, levels,
                               batch_size=batch_size, workers=workers, max_per_class=max_per_class)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    report = {"format": REPORT_FORMAT, "version": REPORT_VERSION, "name": name, "checkpoint": str(checkpoint_path),
              "linear_head": str(head_path), "head_checkpoint": model.head_checkpoint, "arch": model.arch,
              "image_size": model.image_size, "head_classes": len(model.classes), "max_per_class": max_per_class,
              **results}
    out_dir = out_dir or Path("robustness") / name
    reports = _unique_names([report, *others])
    text = markdown(reports)
    write_json(out_dir / "robustness.json", report)
    (out_dir / "robustness.md").write_text(text)
    plot(reports, out_dir / "robustness.png")
    click.echo(text)
    for key, result in report["sets"].items():
        if result["top1"] is None:
            click.echo(f"note: {SET_TITLES[key]} ({result['path']}) shares no class with the head", err=True)
    click.echo(f"wrote {out_dir / 'robustness.md'}, robustness.json and robustness.png")
