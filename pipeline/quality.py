"""Texture quality measured without the synthesis network.

* ``patch_swd``: sliced Wasserstein distance between the distributions of 7x7 RGB
  patches of two image sets. Lower = the texture is made of the same local stuff as
  its crops. Read against baselines measured on the same image: another real crop of
  it (the floor; on a photograph that is not stationary it can score *worse* than a
  texture fitted to both crops), crop-coloured noise and the texture of a different
  image (the ceilings: what "not this texture" scores).
* ``layout_ncc``: the best normalised cross-correlation of each whole 96 px crop
  (high-passed) anywhere in the texture. A copy scores ~1; a texture whose layout is
  gone scores low. ``self_layout_ncc`` reads the same in the crops' own photo, away from
  the crops: what a photo that repeats itself (a brick wall) scores without any copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

PATCH = 7
PROJECTIONS = 128
QUANTILES = 256
HIGH_PASS_RADIUS = 4

#: Adopted thresholds, checked by the tests on the embedded photographs and a synthetic shape.
#: Mean over textures of swd(texture, crops) / swd(crop-coloured noise, crops).
MAX_MEAN_NOISE_RATIO = 0.6
#: A texture may not contain either crop: best high-passed NCC of a crop anywhere in it
#: (``max_layout_ncc``: more for a photo that repeats itself).
MAX_LAYOUT_NCC = 0.5
#: ...while a plain copy of a crop scores above this, which is what makes the measure meaningful.
MIN_COPY_NCC = 0.95
#: ``self_layout_ncc`` looks this far (px, along either axis) from where a crop was cut.
SELF_SHIFT = 24


def _to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [N, 3, H, W] in [0, 1]."""
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # torch wraps numpy memory and warns of a read-only buffer
    t = torch.as_tensor(images)
    t = t.reshape(-1, *t.shape[-3:]).permute(0, 3, 1, 2)
    return t.float() / 255.0


def _patches(images: torch.Tensor, max_patches: int, generator: torch.Generator) -> torch.Tensor:
    """All 7x7 patches of a set of images, subsampled: [P, 147]."""
    p = F.unfold(images, PATCH).permute(0, 2, 1).reshape(-1, 3 * PATCH * PATCH)
    if p.shape[0] > max_patches:
        p = p[torch.randperm(p.shape[0], generator=generator)[:max_patches]]
    return p


def patch_swd(a: np.ndarray, b: np.ndarray, seed: int = 0, max_patches: int = 8192) -> float:
    """Sliced Wasserstein-1 distance between the 7x7 patch distributions of image sets a and b."""
    g = torch.Generator().manual_seed(seed)
    pa, pb = _patches(_to_float(a), max_patches, g), _patches(_to_float(b), max_patches, g)
    directions = torch.randn(pa.shape[1], PROJECTIONS, generator=g)
    directions /= directions.norm(dim=0, keepdim=True)
    q = torch.linspace(0, 1, QUANTILES)
    qa = torch.quantile(pa @ directions, q, dim=0)
    qb = torch.quantile(pb @ directions, q, dim=0)
    return float((qa - qb).abs().mean())


def noise_like(crops: np.ndarray, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """Gaussian noise with the crops' per-channel mean and std: the ceiling baseline."""
    c = crops.reshape(-1, 3).astype(np.float64)
    noise = rng.normal(c.mean(0), c.std(0) + 1e-6, size=(size, size, 3))
    return np.clip(noise, 0, 255).astype(np.uint8)


def _high_pass(images: torch.Tensor, radius: int = HIGH_PASS_RADIUS) -> torch.Tensor:
    """Image minus its local mean: correlation then measures structure, not smooth shading."""
    k = 2 * radius + 1
    blurred = F.avg_pool2d(F.pad(images, (radius,) * 4, mode="replicate"), k, stride=1)
    return images - blurred


def layout_ncc(texture: np.ndarray, crops: np.ndarray) -> float:
    """Best normalised cross-correlation of any whole crop at any position of the texture.

    Both are high-passed first: two smooth gradients correlate whatever their layout.
    """
    return float(_ncc_maps(texture, crops).max())


def self_layout_ncc(
    photo: np.ndarray, crops: np.ndarray, boxes: list[tuple[int, int, int, int]]
) -> float:
    """How much a photo repeats its crops' layout by itself: the best NCC of each crop in its own
    photo at least ``SELF_SHIFT`` px away from where it was cut (box: left, top, right, bottom).
    A wall of bricks or a long straight rocket repeats much of it, an object on its ground little;
    a faithful texture of such a photo may repeat a crop's layout as much as the photo does."""
    maps = _ncc_maps(photo, crops)  # [K, H', W']: (y, x) = crop k's interior over photo[y:, x:]
    ys = torch.arange(maps.shape[-2]).view(-1, 1)
    xs = torch.arange(maps.shape[-1]).view(1, -1)
    best = 0.0
    for k, (left, top, _, _) in enumerate(boxes):
        y0, x0 = top + HIGH_PASS_RADIUS, left + HIGH_PASS_RADIUS  # where its interior was cut
        away = ((ys - y0).abs() >= SELF_SHIFT) | ((xs - x0).abs() >= SELF_SHIFT)
        if away.any():
            best = max(best, float(maps[k][away].max()))
    return best


def max_layout_ncc(self_layout: float) -> float:
    """The layout a texture may reach given its photo's ``self_layout_ncc``: MAX_LAYOUT_NCC, or,
    for a photo that repeats itself, up to halfway from that repetition to a copy. A faithful
    texture of a brick wall or of one long rocket repeats the crop's structure as the photo does
    (the one-image L-BFGS reference's own textures of the demo's rocket read 0.41-0.53)."""
    return max(MAX_LAYOUT_NCC, (self_layout + MIN_COPY_NCC) / 2)


def _ncc_maps(texture: np.ndarray, crops: np.ndarray) -> torch.Tensor:
    """texture uint8 [H, W, 3], crops uint8 [K, h, w, 3] -> float [K, H', W']: the NCC of each
    crop's high-passed interior (r px in from its border) at each position of the texture (at
    (y, x): the interior over texture[y : y + h - 2r, x : x + w - 2r], the whole crop at y - r,
    x - r)."""
    t = _high_pass(_to_float(texture))  # [1, 3, H, W]
    r = HIGH_PASS_RADIUS
    templates = _high_pass(_to_float(crops))[..., r:-r, r:-r]  # interior: no padding effects
    k, _, h, w = templates.shape
    templates = templates - templates.mean(dim=(1, 2, 3), keepdim=True)
    templates = templates / templates.flatten(1).norm(dim=1).clamp_min(1e-8).view(k, 1, 1, 1)
    n = 3 * h * w
    corr = F.conv2d(t, templates)  # sum of (template * window), template zero-mean
    window_sum = F.avg_pool2d(t, (h, w), stride=1).sum(1, keepdim=True) * h * w
    window_sq = F.avg_pool2d(t * t, (h, w), stride=1).sum(1, keepdim=True) * h * w
    window_norm = (window_sq - window_sum**2 / n).clamp_min(1e-8).sqrt()
    return (corr / window_norm)[0]


def noise_ratio(texture: np.ndarray, crops: np.ndarray, seed: int = 0) -> float:
    """texture uint8 [224, 224, 3], crops uint8 [2, 96, 96, 3] -> swd(texture, crops) over
    swd(crop-coloured noise, crops): 0 = the crops' own patches, 1 = no better than noise."""
    noise = noise_like(crops, np.random.default_rng(seed))
    return patch_swd(texture, crops, seed) / max(patch_swd(noise, crops, seed), 1e-12)


@dataclass
class TextureQuality:
    swd: float  # texture vs its two crops
    floor: float  # another real crop of the same image vs the two crops
    noise: float  # crop-coloured noise vs the two crops (ceiling)
    other: float  # a texture made from a different image vs the two crops (ceiling)
    layout: float  # best NCC of a crop inside the texture

    @property
    def noise_ratio(self) -> float:
        return self.swd / max(self.noise, 1e-12)


def measure(
    texture: np.ndarray,
    crops: np.ndarray,
    other_crop: np.ndarray,
    other_texture: np.ndarray,
    seed: int = 0,
) -> TextureQuality:
    """texture uint8 [224,224,3]; crops uint8 [2,96,96,3]; other_crop: another real crop of the
    same image [96,96,3]; other_texture: the texture of a different image [224,224,3]."""
    rng = np.random.default_rng(seed)
    return TextureQuality(
        swd=patch_swd(texture, crops, seed),
        floor=patch_swd(other_crop, crops, seed),
        noise=patch_swd(noise_like(crops, rng), crops, seed),
        other=patch_swd(other_texture, crops, seed),
        layout=layout_ncc(texture, crops),
    )
