"""Evaluation on frozen features (``nsneg-eval``): weighted kNN and a linear probe.

Both read pooled backbone features (MLP head removed) of centre-cropped images, from an
ImageFolder tree (``DIR/<class>/<image>``) or from the source photos of a shard set.

The linear probe is trained on features computed once, without augmentation: a
documented simplification of the paper's protocol (random-resized-crop images through
the frozen network for 60 epochs), which costs a forward pass per image per epoch.
Its numbers are therefore not the paper's protocol; compare them with each other.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import click
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torchvision import datasets, transforms
from tqdm import tqdm

from pipeline import contract, files
from pipeline.encoders import IMAGENET_MEAN, IMAGENET_STD
from trainer import checkpoint

HEAD_FORMAT = "nsneg-linear-head"
HEAD_VERSION = 1
#: Probe step size on standardised features with a zero-initialised layer (see ``train_linear``).
#: In sweeps over 0.001-10 on synthetic features (5-100 classes, 256-2048 dims) every value
#: fits separable data; smaller steps generalised better (implicit regularisation), and
#: 0.01 still reaches 100% train accuracy on separable sets within a few dozen steps.
LINEAR_LR = 0.01


# --------------------------------------------------------------------------- data


def eval_transform(image_size: int) -> Callable:
    """The usual evaluation view: short side to 256/224 of the crop, centre crop, ImageNet normalisation."""
    return transforms.Compose([
        transforms.Resize(round(image_size * 256 / 224)),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class ShardSources(IterableDataset):
    """The source photos of one split of a shard set, with their class index.

    Streams through ``contract.iter_samples``; webdataset hands each DataLoader worker
    its own shards, so every sample is read once whatever ``num_workers`` is.
    """

    def __init__(self, root: Path, split: str, transform: Callable):
        manifest = contract.load_manifest(root)
        if not manifest.get("has_source"):
            raise ValueError(f"{root} holds textures only (built with --no-source): no source photos to evaluate on")
        if split not in manifest["splits"]:
            raise ValueError(f"{root} has no split {split!r} (it has {sorted(manifest['splits'])})")
        self.root, self.split, self.transform = Path(root), split, transform
        self.classes: list[str] = list(manifest["classes"])
        self.samples: int = manifest["splits"][split]["samples"]

    def __len__(self) -> int:
        return self.samples

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        for sample in contract.iter_samples(self.root, self.split):
            yield self.transform(sample.source()), sample.cls


def load_dataset(path: Path, split: str, image_size: int) -> tuple[Dataset, list[str]]:
    """A shard directory (it has a manifest; ``split`` picks the split) or an ImageFolder tree
    -> (dataset of (image, class index), class names in index order)."""
    path = Path(path)
    if (path / contract.MANIFEST_NAME).exists():
        dataset = ShardSources(path, split, eval_transform(image_size))
    else:
        try:
            dataset = datasets.ImageFolder(str(path), eval_transform(image_size))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{path} is neither a shard directory (no {contract.MANIFEST_NAME}) "
                                    f"nor an ImageFolder tree DIR/<class>/<image>: {e}") from None
    if len(dataset) == 0:
        where = f" in split {split!r}" if isinstance(dataset, ShardSources) else ""
        raise ValueError(f"{path} holds no images{where}")
    return dataset, list(dataset.classes)


def align_classes(train_classes: list[str], val_classes: list[str]) -> torch.Tensor:
    """Val class index -> train class index, matched by name, so two sets listing the same
    classes in another order still agree; different class sets are an error."""
    only_train, only_val = sorted(set(train_classes) - set(val_classes)), sorted(set(val_classes) - set(train_classes))
    if only_train or only_val:
        raise ValueError(
            f"train and val classes differ: {len(only_train)} only in train {only_train[:5]}, "
            f"{len(only_val)} only in val {only_val[:5]}"
        )
    index = {name: i for i, name in enumerate(train_classes)}
    return torch.tensor([index[name] for name in val_classes], dtype=torch.long)


# --------------------------------------------------------------------------- features and metrics


@torch.no_grad()
def extract_features(backbone: nn.Module, loader: DataLoader, device: torch.device | str,
                     desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features [N, D] (float32, on the CPU) and labels [N] of every batch of ``loader``."""
    device = torch.device(device)
    backbone = backbone.eval().to(device)
    features, labels = [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = backbone(images.to(device, non_blocking=True))
        features.append(out.float().cpu())
        labels.append(torch.as_tensor(targets, dtype=torch.long))
    if not features:
        raise ValueError("no images to extract features from")
    return torch.cat(features), torch.cat(labels)


@torch.no_grad()
def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 200,
    T: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 256,
) -> float:
    """Top-1 of the weighted kNN classifier of InstDisc (Wu et al. 2018) that MoCo monitors:
    each of the ``k`` training features most cosine-similar to a test feature votes for its
    class with weight ``exp(sim / T)``. Test rows go ``chunk_size`` at a time, so memory is
    ``chunk_size x N_train`` similarities. Computed on the device of ``train_features``."""
    if len(train_features) == 0 or len(test_features) == 0:
        raise ValueError("kNN needs at least one train and one test feature")
    device = train_features.device
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float().to(device), dim=1)
    train_labels, test_labels = train_labels.to(device), test_labels.to(device)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, len(train))
    correct = 0
    for start in range(0, len(test), chunk_size):
        sim, idx = (test[start : start + chunk_size] @ train.T).topk(k, dim=1)
        scores = torch.zeros(len(sim), num_classes, device=device)
        scores.scatter_add_(1, train_labels[idx], (sim / T).exp())
        correct += int((scores.argmax(dim=1) == test_labels[start : start + chunk_size]).sum())
    return correct / len(test)


def train_linear(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    epochs: int = 60,
    lr: float = LINEAR_LR,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> nn.Linear:
    """A linear classifier on frozen features: SGD (momentum 0.9, cosine schedule), cross entropy.

    Features are standardised per dimension with the training set's statistics (a
    BatchNorm1d without affine, exact statistics): raw ResNet features have a scale that
    differs between checkpoints (why MoCo's probe needs lr 30), standardised ones do not,
    so one ``lr`` fits all. Unlike L2 normalisation, standardisation is affine, so it is
    folded into the returned layer, which then applies to raw backbone features as saved.
    The layer starts at zero: convex problem, and a dimension that never fires in training
    keeps weight 0 instead of being divided by its near-zero std. Runs on the features' device.
    """
    x = train_features.float()
    y = train_labels.long().to(x.device)
    mean, std = x.mean(dim=0), x.var(dim=0, unbiased=False).add(1e-5).sqrt()
    x = (x - mean) / std
    head = nn.Linear(x.shape[1], num_classes).to(x.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * math.ceil(len(x) / batch_size))
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="linear probe", unit="epoch", leave=False):
        for idx in torch.randperm(len(x), generator=generator).to(x.device).split(batch_size):
            loss = F.cross_entropy(head(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():  # W (x - mean) / std + b  ==  (W / std) x + (b - (W / std) mean)
        head.weight.div_(std)
        head.bias.sub_(head.weight @ mean)
    return head


@torch.no_grad()
def top1(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor, chunk_size: int = 65536) -> float:
    """Fraction of rows whose highest logit is their label; on the head's device, in chunks
    so that ImageNet-sized sets never hold all their logits at once."""
    device = head.weight.device
    correct = sum(int((head(x.to(device).float()).argmax(dim=1) == y.to(device)).sum())
                  for x, y in zip(features.split(chunk_size), labels.split(chunk_size)))
    return correct / len(labels)


# --------------------------------------------------------------------------- linear head files


def save_linear_head(path: Path, head: nn.Linear, classes: list[str], arch: str, image_size: int, source: str) -> None:
    """Plain tensors and strings only (loads with ``weights_only=True``), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({
        "format": HEAD_FORMAT, "version": HEAD_VERSION,
        "weight": head.weight.detach().cpu().clone(), "bias": head.bias.detach().cpu().clone(),
        "classes": list(classes), "arch": arch, "image_size": int(image_size), "checkpoint": str(source),
    }, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_linear_head(path: Path) -> tuple[nn.Linear, dict[str, Any]]:
    """A head saved by ``nsneg-eval linear``: the layer (applies to raw backbone features) and
    the file's fields (classes, arch, image_size, checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"linear head {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable linear head ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != HEAD_FORMAT:
        raise ValueError(f"{path} is not an nsneg linear head (expected format {HEAD_FORMAT!r})")
    if state.get("version") != HEAD_VERSION:
        raise ValueError(f"{path}: linear head version {state.get('version')}, this nsneg reads {HEAD_VERSION}")
    weight, bias, classes = state.get("weight"), state.get("bias"), state.get("classes")
    if not (isinstance(weight, torch.Tensor) and weight.ndim == 2 and isinstance(bias, torch.Tensor)
            and bias.shape == (weight.shape[0],) and isinstance(classes, list) and len(classes) == weight.shape[0]):
        raise ValueError(f"{path}: weight [C, D], bias [C] and C class names do not fit together")
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head.eval(), state


# --------------------------------------------------------------------------- command line


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise click.BadParameter(str(e), param_hint="--device") from None


def _features(device: torch.device, checkpoint_path: Path, train_dir: Path, val_dir: Path, train_split: str,
              val_split: str, image_size: int | None, batch_size: int, workers: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str], dict[str, Any]]:
    """Both sets' features (val labels in train's class order), train's class names, and the report's fields."""
    if not checkpoint_path.is_file():
        raise click.ClickException(f"checkpoint {checkpoint_path} not found")
    try:
        backbone, config = checkpoint.load_backbone(checkpoint_path)
    except ValueError as e:  # a foreign checkpoint: trainer.checkpoint names the file and what it expected
        raise click.ClickException(str(e)) from None
    except Exception as e:  # not a (complete) torch file at all
        raise click.ClickException(
            f"{checkpoint_path} is not a readable torch checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    image_size = image_size or int(config.get("image_size", 224))
    try:
        train_set, classes = load_dataset(train_dir, train_split, image_size)
        val_set, val_classes = load_dataset(val_dir, val_split, image_size)
        val_to_train = align_classes(classes, val_classes)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None

    def features(dataset: Dataset, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
        return extract_features(backbone, loader, device, desc)

    train_x, train_y = features(train_set, "train features")
    val_x, val_y = features(val_set, "val features")
    report = {
        "checkpoint": str(checkpoint_path), "arch": config.get("arch", "resnet50"), "image_size": image_size,
        "train": str(train_dir), "val": str(val_dir), "classes": len(classes),
        "train_samples": len(train_y), "val_samples": len(val_y),
    }
    return train_x, train_y, val_x, val_to_train[val_y], classes, report


def write_json(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write_json(path, report)


def _data_options(command: Callable) -> Callable:
    directory = click.Path(exists=True, file_okay=False, path_type=Path)
    options = [
        click.option("--checkpoint", "checkpoint_path", required=True, type=click.Path(path_type=Path),
                     help="nsneg checkpoint, or a released MoCo .pth.tar"),
        click.option("--train", "train_dir", required=True, type=directory,
                     help="ImageFolder tree DIR/<class>/<image>, or a shard directory (its source photos)"),
        click.option("--val", "val_dir", required=True, type=directory,
                     help="as --train; classes are matched to train's by name"),
        click.option("--train-split", default="train", show_default=True,
                     help="split read when --train is a shard directory"),
        click.option("--val-split", default="val", show_default=True,
                     help="split read when --val is a shard directory"),
        click.option("--image-size", type=click.IntRange(1), default=None,
                     help="centre crop size [default: the checkpoint's training size, else 224]"),
        click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True),
        click.option("--workers", type=click.IntRange(0), default=2, show_default=True, help="DataLoader workers"),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ..."),
        click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="also write the result here"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group()
def main() -> None:
    """Evaluate a checkpoint's frozen backbone: weighted kNN or a linear probe."""


@main.command()
@_data_options
@click.option("--k", type=click.IntRange(1), default=200, show_default=True, help="neighbours")
@click.option("--t", "temperature", type=click.FloatRange(0, min_open=True), default=0.07, show_default=True,
              help="temperature of the exp(sim / T) vote weights")
def knn(k: int, temperature: float, json_path: Path | None, device: str, **data: Any) -> None:
    """Weighted kNN top-1 of val images against train images (the InstDisc / MoCo monitor)."""
    device = resolve_device(device)
    train_x, train_y, val_x, val_y, classes, report = _features(device, **data)
    acc = knn_accuracy(train_x.to(device), train_y, val_x, val_y, k=k, T=temperature, num_classes=len(classes))
    click.echo(f"knn top-1: {100 * acc:.2f}% (k={k}, T={temperature}, {len(val_y)} val / {len(train_y)} train images)")
    write_json(json_path, {"metric": "knn", "top1": acc, "k": k, "t": temperature, **report})


@main.command()
@_data_options
@click.option("--epochs", type=click.IntRange(1), default=60, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=LINEAR_LR, show_default=True,
              help="peak learning rate (features are standardised, so it does not depend on the checkpoint)")
@click.option("--weight-decay", type=click.FloatRange(0), default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="where to save the trained head (see load_linear_head)")
def linear(epochs: int, lr: float, weight_decay: float, seed: int, out_path: Path, json_path: Path | None,
           device: str, **data: Any) -> None:
    """Train a linear probe on frozen centre-crop features; report val top-1 and save the head."""
    device = resolve_device(device)
    train_x, train_y, val_x, val_y, classes, report = _features(device, **data)
    train_x = train_x.to(device)
    head = train_linear(train_x, train_y, len(classes), epochs=epochs, lr=lr,
                        batch_size=data["batch_size"], weight_decay=weight_decay, seed=seed)
    acc, train_acc = top1(head, val_x, val_y), top1(head, train_x, train_y)
    save_linear_head(out_path, head, classes, report["arch"], report["image_size"], report["checkpoint"])
    click.echo(f"linear top-1: {100 * acc:.2f}% (train {100 * train_acc:.2f}%, {len(val_y)} val / "
               f"{len(train_y)} train images, {epochs} epochs, lr {lr}); head saved to {out_path}")
    write_json(json_path, {"metric": "linear", "top1": acc, "train_top1": train_acc, "epochs": epochs, "lr": lr,
                            "batch_size": data["batch_size"], "weight_decay": weight_decay, "seed": seed,
                            "head": str(out_path), **report})


@main.command()
@click.option("--checkpoint", "checkpoint_path", required=True, type=click.Path(path_type=Path),
              help="nsneg checkpoint, or a released MoCo .pth.tar")
@click.option("--linear-head", "head_path", required=True, type=click.Path(path_type=Path),
              help="head saved by `nsneg-eval linear` for this checkpoint (its classes are the ones evaluated)")
@click.option("--imagenet-val", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="ImageNet(-100) val as DIR/<wnid>/<image>")
@click.option("--imagenet-c", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="released ImageNet-C tree DIR/<corruption>/<severity>/<wnid>/* [default: generate from val]")
@click.option("--sketch", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="ImageNet-Sketch DIR/<wnid>/*")
@click.option("--rendition", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="ImageNet-R DIR/<wnid>/*")
@click.option("--stylized", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Stylized-ImageNet val DIR/<wnid>/*")
@click.option("--corruptions", default="all", show_default=True, help="all, none, or names separated by commas")
@click.option("--severities", default="1,2,3,4,5", show_default=True)
@click.option("--max-per-class", type=click.IntRange(1), default=None, help="at most N images per class and set")
@click.option("--compare", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="robustness.json of another checkpoint to show alongside (repeatable)")
@click.option("--name", default=None, help="this checkpoint's label [default: its run directory or file name]")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where robustness.{md,json,png} go [default: robustness/<name>]")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True, help="DataLoader workers")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
def robustness(device: str, **options: Any) -> None:
    """Top-1 of the frozen encoder + linear head on ImageNet val, ImageNet-C, -Sketch, -R and Stylized-ImageNet."""
    from trainer import robustness as robust  # imported here: it imports this module

    robust.command(device=resolve_device(device), **options)
