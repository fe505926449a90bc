"""What the non-semantic negatives are meant to change, read out of sample on a frozen backbone.

On held-out images (in no pre-training or probe split) and the real Ray job's textures of
them, each image ``x`` is seen as:

* ``intact``: its centre crop (the probes' evaluation view);
* ``positive``: another random resized crop with the pre-training's photometric augmentation
  (``nsneg.trainer.crops.crop_box`` / ``apply_box``, ``nsneg.trainer.augment``);
* ``texture``: its synthesised texture, centre crop;
* ``shuffled``: ``intact`` patch-shuffled by the trainer's ``patch_negatives``, patch sizes
  the paper's range scaled to the view;
* ``blended``: ``shuffled`` with every pixel within one of a tile boundary replaced by its
  3 x 3 mean, so the seams between patches no longer show as sharp edges; ``blended_intact``
  is ``intact`` given the same treatment on the same grid (the control's other class).

Representation reading (cosine similarity ``sim`` of pooled features): the margin of a view
``v`` = mean sim(x, v) - mean sim(x, another held-out image); 0 = no closer than another image.
The positive view's margin is what instance discrimination raises; the paper's negatives are
meant to lower the texture's and the shuffled view's against it.

Shortcut controls: a linear probe on frozen features told intact from shuffled, intact from
blended (seams hidden) and photo from texture, fit on the images of the first half of the
classes and read on the other half (chance 50 %). A network that separates shuffled from
intact but not blended from blended-intact reads the seams, not the layout.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mini_repro.protocol import PATCH_SIZE_RANGE
from mini_repro.world import CLASSES
from nsneg.datasets_manifest.format.manifest import load_manifest
from nsneg.datasets_manifest.format.sample_reader import iter_samples
from nsneg.trainer.augment import augment, sample_params
from nsneg.trainer.crops import apply_box, crop_box
from nsneg.trainer.eval.features import eval_transform
from nsneg.trainer.eval.probes import top1, train_linear
from nsneg.trainer.negatives import REFERENCE_SIZE, _scaled_range, patch_negatives

VIEWS = ("intact", "positive", "texture", "shuffled", "blended", "blended_intact")


@dataclass
class HeldoutViews:
    """Every view of every held-out image, normalised as the backbone sees them: [N, 3, H, W]."""

    views: dict[str, torch.Tensor]
    classes: list[str]  # class name per image
    patch_sizes: torch.Tensor  # [N] the tile side of each image's shuffled views, px


def reference_range(side: int, size: int) -> tuple[int, int]:
    """A ``size_range`` (224 px units) that ``patch_negatives`` scales to exactly ``side`` px at ``size``."""
    for r in range(1, 4 * REFERENCE_SIZE):
        if _scaled_range((r, r), size, size) == (side, side):
            return r, r
    raise ValueError(f"no reference patch size gives {side} px at {size} px")


def seam_band(side: int, size: int) -> torch.Tensor:
    """[size, size] bool: pixels on either side of a boundary between ``side`` x ``side`` tiles."""
    i = torch.arange(size)
    edge = ((i % side == 0) & (i > 0)) | ((i % side == side - 1) & (i < size - 1))
    return edge[:, None] | edge[None, :]


def blend_seams(x: torch.Tensor, side: int) -> torch.Tensor:
    """[3, H, W] -> the same with the tile-boundary band replaced by its 3 x 3 mean."""
    smooth = F.avg_pool2d(x[None], 3, stride=1, padding=1, count_include_pad=False)[0]
    return torch.where(seam_band(side, x.shape[-1]), smooth, x)


def heldout_views(shards: Path, split: str, image_size: int, seed: int = 0) -> HeldoutViews:
    """All views of a held-out shard split (textures made by the Ray job), reproducible from ``seed``."""
    manifest_classes = load_manifest(shards)["classes"]
    centre = eval_transform(image_size)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    lo, hi = _scaled_range(PATCH_SIZE_RANGE, image_size, image_size)
    views: dict[str, list[torch.Tensor]] = {v: [] for v in VIEWS}
    classes, sides = [], []
    for sample in iter_samples(shards, split):
        source = sample.source()
        if source is None:
            raise ValueError(f"{shards} holds textures only: the held-out reading needs the images")
        intact = centre(source)
        crop = apply_box(source, crop_box(*source.size, rng), image_size).float().div_(255)
        positive = augment(crop[None], sample_params(1, generator))[0]
        side = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        shuffled = patch_negatives(intact[None], 1, reference_range(side, image_size), generator)[
            0, 0
        ]
        views["intact"].append(intact)
        views["positive"].append(positive)
        views["texture"].append(centre(sample.texture))
        views["shuffled"].append(shuffled)
        views["blended"].append(blend_seams(shuffled, side))
        views["blended_intact"].append(blend_seams(intact, side))
        classes.append(manifest_classes[sample.cls])
        sides.append(side)
    if len(classes) < 2:
        raise ValueError(f"{shards} split {split!r} holds {len(classes)} images: need >= 2")
    unknown = sorted(set(classes) - set(CLASSES))
    if unknown:
        raise ValueError(f"{shards}: classes {unknown} are not the world's")
    return HeldoutViews({k: torch.stack(v) for k, v in views.items()}, classes, torch.tensor(sides))


@torch.no_grad()
def embed(backbone: nn.Module, x: torch.Tensor, device: str, batch: int = 256) -> torch.Tensor:
    """Pooled features [N, D] (float32, CPU) of normalised images [N, 3, H, W]."""
    backbone = backbone.eval().to(device)
    return torch.cat([backbone(b.to(device)).float().cpu() for b in x.split(batch)])


def control_probe(
    a: torch.Tensor, b: torch.Tensor, fit: torch.Tensor, epochs: int, seed: int
) -> float:
    """Top-1 % of a linear probe telling features ``a`` (0) from ``b`` (1), fit where ``fit``, read elsewhere."""
    x = torch.cat([a, b])
    y = torch.cat([torch.zeros(len(a)), torch.ones(len(b))]).long()
    mask = torch.cat([fit, fit])
    head = train_linear(x[mask], y[mask], 2, epochs=epochs, seed=seed)
    return 100 * top1(head, x[~mask], y[~mask])


def read(
    backbone: nn.Module, held: HeldoutViews, device: str, probe_epochs: int, seed: int
) -> dict[str, Any]:
    """The representation reading and the shortcut controls of one backbone."""
    n = len(held.classes)
    every = embed(backbone, torch.cat([held.views[v] for v in VIEWS]), device)
    raw = dict(zip(VIEWS, every.split(n)))  # unnormalised: the probes standardise
    f = {v: F.normalize(x, dim=1) for v, x in raw.items()}
    sim = {v: float((f["intact"] * f[v]).sum(dim=1).mean()) for v in VIEWS if v != "intact"}
    gram = f["intact"] @ f["intact"].T
    sim["other"] = float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))
    fit = torch.tensor([c in CLASSES[: len(CLASSES) // 2] for c in held.classes])
    if fit.all() or not fit.any():
        raise ValueError("the held-out images must cover both halves of the classes")
    return {
        "similarity": sim,
        "positive_margin": sim["positive"] - sim["other"],
        "texture_margin": sim["texture"] - sim["other"],
        "shuffle_margin": sim["shuffled"] - sim["other"],
        "blended_shuffle_margin": sim["blended"] - sim["other"],
        "shuffled_vs_intact": control_probe(
            raw["intact"], raw["shuffled"], fit, probe_epochs, seed
        ),
        "blended_shuffled_vs_intact": control_probe(
            raw["blended_intact"], raw["blended"], fit, probe_epochs, seed
        ),
        "texture_vs_photo": control_probe(raw["intact"], raw["texture"], fit, probe_epochs, seed),
    }
