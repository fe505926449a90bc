"""Probes on frozen features: the weighted kNN classifier, the linear probe, and linear heads on disk.

The linear probe is trained on features computed once, without augmentation: a documented
simplification of the paper's protocol (random-resized-crop images through the frozen network
for 60 epochs), which costs a forward pass per image per epoch. Its numbers are therefore not
the paper's protocol; compare them with each other.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from nsneg.datasets_manifest.format import files

HEAD_FORMAT = "nsneg-linear-head"
HEAD_VERSION = 1
#: Probe step size on standardised features with a zero-initialised layer (see ``train_linear``).
#: In sweeps over 0.001-10 on synthetic features (5-100 classes, 256-2048 dims) every value
#: fits separable data; smaller steps generalised better (implicit regularisation), and
#: 0.01 still reaches 100% train accuracy on separable sets within a few dozen steps.
LINEAR_LR = 0.01


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
    class with weight ``exp(sim / T)`` (lightly's ``knn_predict``). Test rows go ``chunk_size``
    at a time, so memory is ``chunk_size x (N_train + k x num_classes)`` floats. Computed on the
    device of ``train_features``. A tie between classes' scores goes to whichever class
    ``knn_predict``'s ``argsort`` puts first."""
    from lightly.utils.benchmarking import knn_predict

    if len(train_features) == 0 or len(test_features) == 0:
        raise ValueError("kNN needs at least one train and one test feature")
    device = train_features.device
    train = F.normalize(train_features.float(), dim=1)  # [N_train, D]
    test = F.normalize(test_features.float().to(device), dim=1)  # [N_test, D]
    train_labels, test_labels = train_labels.to(device), test_labels.to(device)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, len(train))
    correct = 0
    for start in range(0, len(test), chunk_size):
        ranked = knn_predict(
            test[start : start + chunk_size], train.T, train_labels, num_classes, k, T
        )  # [chunk, C]: classes by score
        correct += int((ranked[:, 0] == test_labels[start : start + chunk_size]).sum())
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
    x = train_features.float()  # [N, D]
    y = train_labels.long().to(x.device)
    mean, std = x.mean(dim=0), x.var(dim=0, unbiased=False).add(1e-5).sqrt()
    x = (x - mean) / std
    head = nn.Linear(x.shape[1], num_classes).to(x.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs * math.ceil(len(x) / batch_size)
    )
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="linear probe", unit="epoch", leave=False, disable=None):
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
def top1(
    head: nn.Linear, features: torch.Tensor, labels: torch.Tensor, chunk_size: int = 65536
) -> float:
    """Fraction of rows whose highest logit is their label; on the head's device, in chunks
    so that ImageNet-sized sets never hold all their logits at once."""
    device = head.weight.device
    correct = sum(
        int((head(x.to(device).float()).argmax(dim=1) == y.to(device)).sum())
        for x, y in zip(features.split(chunk_size), labels.split(chunk_size))
    )
    return correct / len(labels)


@torch.no_grad()
def predict(head: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    """The head's class index for every row (on the head's device, returned on the CPU)."""
    return head(features.to(head.weight.device).float()).argmax(dim=1).cpu()


# --------------------------------------------------------------------------- linear heads on disk


def save_linear_head(
    path: Path, head: nn.Linear, classes: list[str], arch: str, image_size: int, source: str
) -> None:
    """Plain tensors and strings only (loads with ``weights_only=True``), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_path(path) as tmp:
        torch.save(
            {
                "format": HEAD_FORMAT,
                "version": HEAD_VERSION,
                "weight": head.weight.detach().cpu().clone(),
                "bias": head.bias.detach().cpu().clone(),
                "classes": list(classes),
                "arch": arch,
                "image_size": int(image_size),
                "checkpoint": str(source),
            },
            tmp,
        )


def load_linear_head(path: Path) -> tuple[nn.Linear, dict[str, Any]]:
    """A head saved by ``nsneg-eval linear``: the layer (applies to raw backbone features) and
    the file's fields (classes, arch, image_size, checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"linear head {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path} is not a readable linear head ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != HEAD_FORMAT:
        raise ValueError(f"{path} is not an nsneg linear head (expected format {HEAD_FORMAT!r})")
    if state.get("version") != HEAD_VERSION:
        raise ValueError(
            f"{path}: linear head version {state.get('version')}, this nsneg reads {HEAD_VERSION}"
        )
    weight, bias, classes = state.get("weight"), state.get("bias"), state.get("classes")
    if not (
        isinstance(weight, torch.Tensor)
        and weight.ndim == 2
        and isinstance(bias, torch.Tensor)
        and bias.shape == (weight.shape[0],)
        and isinstance(classes, list)
        and len(classes) == weight.shape[0]
    ):
        raise ValueError(f"{path}: weight [C, D], bias [C] and C class names do not fit together")
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head.eval(), state
