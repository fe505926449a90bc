"""Tensor image operations the ImageNet-C corruptions (``nsneg.trainer.eval.corruptions``) are built
from: per-image random fields, separable Gaussian blur with scipy's border modes, shifts,
ImageMagick-style motion-blur kernels, zooms, plasma fractals, box resizing, greyscale."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d

Rngs = Sequence[np.random.Generator]


def field(
    rngs: Rngs, draw: Callable[[np.random.Generator], np.ndarray], like: torch.Tensor
) -> torch.Tensor:
    """One random array per image, stacked, as float32 on ``like``'s device."""
    return torch.from_numpy(np.stack([draw(g) for g in rngs]).astype(np.float32)).to(like.device)


def uniform(
    rngs: Rngs, low: float, high: float, like: torch.Tensor, shape: tuple[int, ...] = ()
) -> torch.Tensor:
    return field(rngs, lambda g: g.uniform(low, high, shape), like)


@lru_cache(maxsize=64)
def gaussian_matrix(n: int, sigma: float, mode: str, truncate: float) -> torch.Tensor:
    """[n, n] operator of scipy's 1-D Gaussian filter (what skimage's ``gaussian`` runs), so a
    separable blur is two matmuls, exact at the borders whatever sigma is."""
    return torch.from_numpy(
        gaussian_filter1d(np.eye(n), sigma, axis=0, mode=mode, truncate=truncate)
    ).float()


def gaussian_blur(
    x: torch.Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0
) -> torch.Tensor:
    """Blur over the last two dims (skimage ``gaussian`` defaults: edge pixels repeated, 4 sigma)."""
    rows = gaussian_matrix(x.shape[-2], float(sigma), mode, truncate).to(x.device)
    cols = gaussian_matrix(x.shape[-1], float(sigma), mode, truncate).to(x.device)
    return rows @ x @ cols.T


def shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """``out[b, :, i, j] = x[b, :, i + dy[b], j + dx[b]]`` with integer per-image offsets, edges repeated."""
    b, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device) + dy[:, None]).clamp(0, h - 1)
    cols = (torch.arange(w, device=x.device) + dx[:, None]).clamp(0, w - 1)
    x = x.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def motion_blur(
    x: torch.Tensor, radius: int, sigma: float, angle_deg: torch.Tensor
) -> torch.Tensor:
    """ImageMagick's MotionBlurImage: a weighted sum of the image shifted by ``i`` pixels along
    ``angle`` (rounded), ``i = 0 .. 2 * radius``, weights ``exp(-i^2 / 2 sigma^2)`` normalised."""
    taps = torch.arange(2 * math.ceil(radius) + 1, dtype=torch.float32, device=x.device)
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    angle = torch.deg2rad(angle_deg.to(x.device))
    dx = torch.ceil(taps[None] * angle.cos()[:, None] - 0.5).long()  # [B, taps]
    dy = torch.ceil(taps[None] * angle.sin()[:, None] - 0.5).long()
    return sum(w * shift(x, dy[:, i], dx[:, i]) for i, w in enumerate(weights))


def zoom_coords(n: int, zoom: float, device: torch.device) -> torch.Tensor:
    """Source coordinate of each output pixel along one axis in the reference's ``clipped_zoom``:
    crop the central ``ceil(n / zoom)`` pixels, scipy-zoom them (corners aligned), trim to ``n``."""
    crop = math.ceil(n / zoom)
    top, zoomed = (n - crop) // 2, round(crop * zoom)
    trim = (zoomed - n) // 2
    return top + (torch.arange(n, device=device, dtype=torch.float32) + trim) * (crop - 1) / (
        zoomed - 1
    )


def sample(
    x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, padding: str = "border"
) -> torch.Tensor:
    """Bilinear samples of ``x`` at pixel coordinates ``ys, xs`` of shape [B, H', W']."""
    h, w = x.shape[-2:]
    grid = torch.stack([2 * xs / (w - 1) - 1, 2 * ys / (h - 1) - 1], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=True)


def clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    ys, xs = torch.meshgrid(
        zoom_coords(h, zoom, x.device), zoom_coords(w, zoom, x.device), indexing="ij"
    )
    return sample(x, ys.expand(len(x), h, w), xs.expand(len(x), h, w))


def plasma(rngs: Rngs, size: int, decay: float) -> np.ndarray:
    """Diamond-square fractal heightmaps [B, size, size] in [0, 1] (``size`` a power of two),
    wrapping at the edges; the amplitude of level k is ``(100 / decay^k)^2``, as in the reference."""
    maps = np.zeros((len(rngs), size, size))
    step, wibble = size, 100.0

    def jitter(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * np.stack(
            [g.uniform(-wibble, wibble, total.shape[1:]) for g in rngs]
        )

    while step >= 2:
        half = step // 2
        corners = maps[:, ::step, ::step]
        square = corners + np.roll(corners, -1, axis=1)
        maps[:, half::step, half::step] = jitter(square + np.roll(square, -1, axis=2))
        centres, corners = maps[:, half::step, half::step], maps[:, ::step, ::step]
        maps[:, ::step, half::step] = jitter(
            centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        )
        maps[:, half::step, ::step] = jitter(
            centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        )
        step, wibble = half, wibble / decay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def plasma_like(x: torch.Tensor, rngs: Rngs, decay: float) -> torch.Tensor:
    """A fractal [B, 1, H, W] cropped from the smallest power-of-two square (at least 256) that covers ``x``."""
    h, w = x.shape[-2:]
    size = max(256, 1 << (max(h, w) - 1).bit_length())
    return torch.from_numpy(plasma(rngs, size, decay)[:, None, :h, :w]).float().to(x.device)


@lru_cache(maxsize=64)
def box_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] weights of PIL's BOX resampling along one axis: an output pixel averages the
    input pixels whose centres fall in its footprint (nearest neighbour when enlarging)."""
    scale = n_in / n_out
    footprint = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    first = np.maximum((centres - footprint / 2 + 0.5).astype(int), 0)
    last = np.minimum((centres + footprint / 2 + 0.5).astype(int), n_in)
    j = np.arange(n_in)[None]
    u = (j + 0.5 - centres[:, None]) / footprint
    weights = ((u > -0.5) & (u <= 0.5) & (j >= first[:, None]) & (j < last[:, None])).astype(
        np.float64
    )
    return torch.from_numpy(weights / weights.sum(axis=1, keepdims=True)).float()


def grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma [B, 1, H, W], as OpenCV's RGB2GRAY."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


# --------------------------------------------------------------------------- noise
