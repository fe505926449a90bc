"""The 15 ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019), batched on float tensors.

``corrupt(images, name, severity, seeds)`` takes RGB images ``[B, 3, H, W]`` in [0, 1] and
returns the corrupted batch, same shape, in [0, 1], on the images' device. Severities 1-5
use the parameter tables of the reference ``make_imagenet_c.py``; its pixel-sized
parameters (blur radii, displacements) are meant for the 224 x 224 centre crops ImageNet-C
was made from, and are applied as they are at any size.

Every random draw comes from ``numpy.random.default_rng(seed)`` of its own image, so one
image gets the same corruption whatever batch it is in, and the same random field at every
severity (only the parameters change).

Where this differs from the reference (which needs OpenCV, ImageMagick and six frost
photographs):

* ``frost``: the photographs are not available; the ice layer is synthesised (a plasma
  fractal for where the ice is thick, crystal needles from sparse seeds smeared along three
  random directions, tinted blue-white; mean about 0.4), blended with the reference weights.
* ``motion_blur`` and the streaks of ``snow``: ImageMagick's motion blur, re-implemented as
  its one-sided half-Gaussian line kernel (2 * radius + 1 taps at integer offsets, edge pixels
  repeated), at a random angle.
* ``glass_blur``: the reference swaps pixels one after another in a Python loop (so some travel
  further than ``max_delta``); here every pixel takes the value of a random neighbour at once,
  ``iterations`` times, with offsets in ``[-max_delta, max_delta]``: symmetric, because a
  one-sided range would, without swaps, shift the whole image. No uint8 rounding in between.
* ``defocus_blur``: the anti-aliased disk kernel is normalised again after smoothing: with the
  mirrored border (OpenCV's default) its sum is about 1.01 at severities 4-5, which brightens.
* ``elastic_transform``: the random affine warp and the smooth displacement field are composed
  and sampled once (bilinear, mirrored border) instead of interpolated twice.
* Results stay float: no uint8 quantisation between steps, and no JPEG-85 re-encoding of the
  output (the released ImageNet-C files are JPEGs). ``jpeg_compression`` rounds its input to
  uint8, as PIL must.
* The reference's elastic table is not monotonic in distortion: severities 1-2 are large
  affine warps (up to +-24 and +-49 px corner moves), 3-5 small local wobbles. Kept as is.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nsneg.trainer.eval import image_ops as ops
from nsneg.trainer.eval.image_ops import Rngs

# --------------------------------------------------------------------------- severity tables (reference values)

GAUSSIAN_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)  # std
SHOT_NOISE = (60, 25, 12, 5, 3)  # photons per unit intensity
IMPULSE_NOISE = (0.03, 0.06, 0.09, 0.17, 0.27)  # fraction of values set to 0 or 1
DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))  # disk radius, anti-alias sigma
GLASS_BLUR = (
    (0.7, 1, 2),
    (0.9, 2, 1),
    (1, 2, 3),
    (1.1, 3, 2),
    (1.5, 4, 2),
)  # sigma, max delta, iterations
MOTION_BLUR = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # radius, sigma
ZOOM_BLUR = (
    (1.11, 0.01),
    (1.16, 0.01),
    (1.21, 0.02),
    (1.26, 0.02),
    (1.31, 0.03),
)  # np.arange(1, stop, step)
SNOW = (  # flake mean, std, zoom, threshold, blur radius, blur sigma, image weight
    (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
    (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
    (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
)
FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))  # image weight, frost weight
FOG = ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4))  # fog strength, fractal decay
BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to HSV value
CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)  # factor on the deviation from the channel mean
ELASTIC = tuple(
    (244 * a, 244 * s, 244 * m)
    for a, s, m in (  # alpha, sigma, affine corner move (px)
        (2, 0.7, 0.1),
        (2, 0.08, 0.2),
        (0.05, 0.01, 0.02),
        (0.07, 0.01, 0.02),
        (0.12, 0.01, 0.02),
    )
)
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)  # size factor
JPEG_QUALITY = (25, 18, 15, 10, 7)


def gaussian_noise(x: torch.Tensor, severity: int, rngs: Rngs) -> torch.Tensor:
    return x + GAUSSIAN_NOISE[severity - 1] * ops.field(
        rngs, lambda g: g.standard_normal(x.shape[1:]), x
    )


def shot_noise(x: torch.Tensor, severity: int, rngs: Rngs) -> torch.Tensor:
    """Photon counting: Poisson(x * c) / c, so the mean is kept and the variance is x / c."""
    c = SHOT_NOISE[severity - 1]
    rates = (x * c).double().cpu().numpy()
    return (
        torch.from_numpy(np.stack([g.poisson(r) for g, r in zip(rngs, rates)]) / c)
        .float()
        .to(x.device)
    )


def impulse_noise(x: torch.Tensor, severity: int, rngs: Rngs) -> torch.Tensor:
    """Salt and pepper (skimage ``random_noise(mode='s&p')``): each value, channels independently,
    becomes 0 or 1 (even odds) with probability c."""
    draws = ops.field(rngs, lambda g: g.random((2, *x.shape[1:])), x)
    flipped, salt = draws[:, 0] < IMPULSE_NOISE[severity - 1], draws[:, 1] < 0.5
    return torch.where(flipped, salt.to(x.dtype), x)


# --------------------------------------------------------------------------- blur


@lru_cache(maxsize=8)
def _disk(radius: int, alias_sigma: float) -> torch.Tensor:
    """The reference's defocus kernel: a normalised disk on a grid of at least 17 x 17,
    smoothed by a small Gaussian (3 x 3, or 5 x 5 past radius 8; mirrored kernel border), and
    normalised again: where the disk touches the grid's edge (radius 8 and 10) the mirrored
    border adds about 1% to the kernel's sum."""
    half, k = (8, 3) if radius <= 8 else (radius, 5)
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((grid[:, None] ** 2 + grid[None] ** 2) <= radius**2).double()
    disk /= disk.sum()
    taps = torch.arange(k, dtype=torch.float64) - k // 2
    g = torch.exp(-(taps**2) / (2 * alias_sigma**2))
    g /= g.sum()
    padded = F.pad(disk[None, None], (k // 2,) * 4, mode="reflect")
    kernel = F.conv2d(padded, (g[:, None] * g[None])[None, None])[0, 0]
    return (kernel / kernel.sum()).float()


def defocus_blur(x: torch.Tensor, severity: int, rngs: Rngs) -> torch.Tensor:
    kernel = _disk(*DEFOCUS_BLUR[severity - 1]).to(x.device)
    pad = kernel.shape[-1] // 2
    b, c, h, w = x.shape
    out = F.conv2d(F.pad(x.reshape(b * c, 1, h, w), (pad,) * 4, mode="reflect"), kernel[None, None])
    return out.reshape(b, c, h, w)


def glass_blur(x: torch.Tensor, severity: int, rngs: Rngs) -> torch.Tensor:
    """Blur, scramble pixels locally ``iterations`` times, blur again."""
    sigma, delta, iterations = GLASS_BLUR[severity - 1]
    b, c, h, w = x.shape
    x = ops.gaussian_blur(x, sigma)
    rows, cols = torch.meshgrid(
        torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij"
    )
    offsets = ops.field(
        rngs, lambda g: g.integers(-delta, delta + 1, (iterations, 2, h, w)), x
    ).long()
    for i in range(iterations):
        src = (rows + offsets[:, i, 0]).clamp(0, h - 1) * w + (cols + offsets[:, i, 1]).clamp(
            0, w - 1
        )
        x = (
            x.reshape(b, c, h * w)
            .gather(2, src.reshape(b, 1, h * w).expand(b, c, h * w))
            .reshape(b, c, h, w)
        )
    return ops.gaussian_blur(x, sigma)


def motion_blur(x: torch.Tensor, severity: int, rngs: Rngs) -> torch.Tensor:
    radius, sigma = MOTION_BLUR[severity - 1]
    return ops.motion_blur(x, radius, sigma, ops.uniform(rngs, -45, 45, x))


def zoom_blur(x: torch.Tensor, severity: int, rngs: Rngs) -> torch.Tensor:
    """The mean of the image and its zooms into the centre by ``np.arange(1, stop, step)``."""
    zooms = np.arange(1, *ZOOM_BLUR[severity - 1])
    return (x + sum(ops.clipped_zoom(x, float(z)) for z in zooms)) / (len(zooms) + 1)


# --------------------------------------------------------------------------- weather


def snow(x: torch.Tensor, severity: int, rngs: Rngs) -> torch.Tensor:
    """Thresholded, zoomed Gaussian flakes smeared by a motion blur falling at -135..-45 degrees,
    added twice (the layer and its 180-degree rotation) to a greyed, brightened image."""
    mean, std, zoom, threshold, radius, sigma, weight = SNOW[severity - 1]
    flakes = ops.field(rngs, lambda g: g.normal(mean, std, (1, *x.shape[-2:])), x)
    flakes = ops.clipped_zoom(flakes, zoom)
    flakes = torch.where(flakes < threshold, 0.0, flakes).clamp(0, 1)
    flakes = ops.motion_blur(flakes, radius, sigma, ops.uniform(rngs, -135, -45, x))
    x = weight * x + (1 - weight) * torch.maximum(x, ops.grey(x) * 1.5 + 0.5)
    return x + flakes + flakes.flip(-2, -1)


def frost_layer(x: torch.Tensor, rngs: Rngs) -> torch.Tensor:
    """Synthetic ice [B, 3, H, W] in [0, 1], standing in for the reference's frost photographs:
    thick and thin patches from a plasma fractal, crystal needles (sparse seeds motion-blurred
    along three random directions), blue-white tint."""
    density = ops.plasma_like(x, rngs, decay=1.6)
    seeds = ops.field(rngs, lambda g: g.random((1, *x.shape[-2:])) < 0.015, x)
    needles = sum(ops.motion_blur(seeds, 8, 5.0, ops.uniform(rngs, 0, 360, x)) for _ in range(3))
    needles = needles / needles.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    ice = (0.15 + 0.55 * density + 0.9 * needles * (0.4 + density)).clamp(0, 1)
    return ice * torch.tensor([0.86, 0.93, 1.0], device=x.device).view(1, 3, 1, 1)


def frost(x: torch.Tensor, severity: int, rngs: Rngs) -> torch.Tensor:
    weight, ice = FROST[severity - 1]
    return weight * x + ice * frost_layer(x, rngs)


def fog(x: torch.Tensor, severity: int, rngs: Rngs) -> torch.Tensor:
    """A plasma fractal added to the image, rescaled so the image's maximum keeps its place."""
    strength, decay = FOG[severity - 1]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * ops.plasma_like(x, rngs, decay)) * peak / (peak + strength)


# --------------------------------------------------------------------------- digital


def brightness(x: torch.Tensor, severity: int, rngs: Rngs) -> torch.Tensor:
    """HSV value + c (clipped at 1), hue and saturation kept. RGB is value times a function of
    hue and saturation, so this is a rescale by new/old value; black becomes grey."""
    value = x.amax(dim=1, keepdim=True)
    new = (value + BRIGHTNESS[severity - 1]).clamp(max=1)
    return torch.where(value > 0, x * new / value.clamp_min(1e-12), new)


def contrast(x: torch.Tensor, severity: int, rngs: Rngs) -> torch.Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * CONTRAST[severity - 1] + mean


def elastic_transform(x: torch.Tensor, severity: int, rngs: Rngs) -> torch.Tensor:
    """A random affine warp (three control points moved by up to ``affine`` px) followed by a
    smooth displacement field (uniform noise, Gaussian-smoothed with ``sigma``, times ``alpha``)."""
    alpha, sigma, affine = ELASTIC[severity - 1]
    b, _, h, w = x.shape
    cx, cy, s = w // 2, h // 2, min(h, w) // 3
    fixed = torch.tensor(
        [[cx + s, cy + s], [cx + s, cy - s], [cx - s, cy - s]], dtype=torch.float32
    )
    moved = fixed + ops.uniform(rngs, -affine, affine, fixed, (3, 2))
    # Output pixel p samples the source at A p, where A maps the moved points back to the fixed ones.
    ones = torch.ones(b, 3, 1)
    inverse = torch.linalg.solve(torch.cat([moved, ones], dim=2), fixed.expand(b, 3, 2)).to(
        x.device
    )  # [B, 3, 2]
    noise = ops.field(rngs, lambda g: g.uniform(-1, 1, (2, h, w)), x)
    dx, dy = (alpha * ops.gaussian_blur(noise, sigma, mode="reflect", truncate=3)).unbind(1)
    rows, cols = torch.meshgrid(
        torch.arange(h, device=x.device, dtype=torch.float32),
        torch.arange(w, device=x.device, dtype=torch.float32),
        indexing="ij",
    )
    px, py = cols + dx, rows + dy
    src_x = (
        inverse[:, 0, 0, None, None] * px
        + inverse[:, 1, 0, None, None] * py
        + inverse[:, 2, 0, None, None]
    )
    src_y = (
        inverse[:, 0, 1, None, None] * px
        + inverse[:, 1, 1, None, None] * py
        + inverse[:, 2, 1, None, None]
    )
    return ops.sample(x, src_y, src_x, padding="reflection")


def pixelate(x: torch.Tensor, severity: int, rngs: Rngs) -> torch.Tensor:
    """PIL BOX resize to ``int(size * c)`` and back: block means, then nearest neighbour."""
    h, w = x.shape[-2:]
    c = PIXELATE[severity - 1]
    rows = (ops.box_matrix(int(h * c), h) @ ops.box_matrix(h, int(h * c))).to(x.device)
    cols = (ops.box_matrix(int(w * c), w) @ ops.box_matrix(w, int(w * c))).to(x.device)
    return rows @ x @ cols.T


def jpeg_compression(x: torch.Tensor, severity: int, rngs: Rngs) -> torch.Tensor:
    """PIL JPEG encode / decode at the severity's quality (input rounded to uint8)."""
    pixels = (x * 255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY[severity - 1])
        out.append(np.asarray(Image.open(buffer).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(255).to(x.device)


# --------------------------------------------------------------------------- entry point

#: In the order of the ImageNet-C paper (noise, blur, weather, digital).
CORRUPTIONS: dict[str, Callable[[torch.Tensor, int, Rngs], torch.Tensor]] = {
    f.__name__: f
    for f in (
        gaussian_noise,
        shot_noise,
        impulse_noise,
        defocus_blur,
        glass_blur,
        motion_blur,
        zoom_blur,
        snow,
        frost,
        fog,
        brightness,
        contrast,
        elastic_transform,
        pixelate,
        jpeg_compression,
    )
}
SEVERITIES = (1, 2, 3, 4, 5)


def corrupt(images: torch.Tensor, name: str, severity: int, seeds: Sequence[int]) -> torch.Tensor:
    """``images`` [B, 3, H, W] in [0, 1] with corruption ``name`` at ``severity`` (1-5); image
    ``i`` draws its randomness from ``numpy.random.default_rng(seeds[i])``. Float32, in [0, 1]."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images [B, 3, H, W], got shape {tuple(images.shape)}")
    if len(seeds) != len(images):
        raise ValueError(f"{len(images)} images but {len(seeds)} seeds")
    rngs = [np.random.default_rng(int(seed)) for seed in seeds]
    return CORRUPTIONS[name](images.float(), severity, rngs).clamp(0, 1)
