"""MoCo v2 "aug-plus", split where it is cheapest and batched on the training device.

Geometry (RandomResizedCrop, scale 0.2-1) is done by the loader on decoded images
(``nsneg.trainer.crops``), which also gives the texture its query's crop. Everything else --
colour jitter 0.4/0.4/0.4/0.1 with p=0.8 in a random order, grayscale p=0.2, Gaussian
blur sigma in [0.1, 2] with p=0.5, horizontal flip, normalisation -- runs here on a
whole batch at once with per-sample parameters. The parameters are a value of their own
(``PhotometricParams``) so that the texture negative gets exactly its query's.

One pass per jitter position: brightness, contrast and saturation are all a blend
``f x + (1 - f) other`` (other = black, the mean grey, the grey image), so each sample's op at
that position is one blend with per-sample ``f`` and ``other`` (``f = 1``: untouched). Hue,
blur and flip run on the samples that draw them only, written back in place. The
parameters live on the CPU, so which samples those are is known without asking the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nsneg.datasets_manifest.format.constants import IMAGENET_MEAN, IMAGENET_STD

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
GRAY = torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601-2 luma, as torchvision
JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
P_JITTER, P_GRAY, P_BLUR, P_FLIP = 0.8, 0.2, 0.5, 0.5
SIGMA = (0.1, 2.0)


@dataclass
class PhotometricParams:
    jitter: torch.Tensor  # [B] bool
    factors: torch.Tensor  # [B, 4]: brightness, contrast, saturation factors; hue shift
    order: torch.Tensor  # [B, 4] a permutation of the four jitter ops per sample
    gray: torch.Tensor  # [B] bool
    blur: torch.Tensor  # [B] bool
    sigma: torch.Tensor  # [B]
    flip: torch.Tensor  # [B] bool


def sample_params(batch: int, generator: torch.Generator | None = None) -> PhotometricParams:
    """Per-sample parameters, drawn on the CPU from ``generator`` (so runs and resumes repeat)."""
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    b, c, s, h = JITTER
    low = torch.tensor([1 - b, 1 - c, 1 - s, -h])
    high = torch.tensor([1 + b, 1 + c, 1 + s, h])
    return PhotometricParams(
        jitter=u(batch) < P_JITTER,
        factors=low + (high - low) * u(batch, 4),
        order=torch.argsort(u(batch, 4), dim=1),
        gray=u(batch) < P_GRAY,
        blur=u(batch) < P_BLUR,
        sigma=SIGMA[0] + (SIGMA[1] - SIGMA[0]) * u(batch),
        flip=u(batch) < P_FLIP,
    )


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] -> [B,1,H,W] luma."""
    return (x * GRAY.to(x.device, x.dtype)).sum(dim=1, keepdim=True)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] RGB in [0,1] -> HSV, hue in [0,1) (the formulas of torchvision's adjust_hue)."""
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    flat = maxc == minc
    chroma = maxc - minc
    s = chroma / torch.where(flat, torch.ones_like(maxc), maxc)
    divisor = torch.where(flat, torch.ones_like(chroma), chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack([h, s, maxc], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_hsv``."""
    h, s, v = x.unbind(dim=1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int32) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    sector = (i.unsqueeze(1) == torch.arange(6, device=i.device).view(1, -1, 1, 1)).to(
        x.dtype
    )  # [B,6,H,W]
    table = torch.stack(
        [
            torch.stack(c, dim=1)
            for c in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))
        ],
        dim=1,
    )  # [B,3,6,H,W]
    return torch.einsum("bshw,bcshw->bchw", sector, table)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each sample by ``shift`` [B] (in turns, within [-0.5, 0.5])."""
    hsv = rgb_to_hsv(x)
    hue = (hsv[:, :1] + shift.view(-1, 1, 1, 1).to(x.dtype)) % 1.0
    return hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], dim=1))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample; kernel ~10 % of the image (23 px at 224)."""
    b, c, h, w = x.shape
    k = max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)
    r = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kernel = torch.exp(-(r.view(1, -1) ** 2) / (2 * sigma.view(-1, 1).to(x.dtype) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [B*C, k]
    y = F.pad(x.reshape(1, b * c, h, w), (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    y = F.conv2d(y, kernel.view(b * c, 1, k, 1), groups=b * c)
    y = F.conv2d(y, kernel.view(b * c, 1, 1, k), groups=b * c)
    return y.view(b, c, h, w)


def _rows(mask: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """Indices (on ``device``) of the samples in a CPU ``mask``; None when there are none."""
    idx = mask.nonzero().squeeze(1)
    return idx.to(device, non_blocking=True) if idx.numel() else None


def augment(x: torch.Tensor, p: PhotometricParams) -> torch.Tensor:
    """x: float [B,3,H,W] in [0,1] on any device (left untouched) -> augmented, normalised views."""
    device = x.device
    b = x.shape[0]
    factors = p.factors.to(device, x.dtype, non_blocking=True)
    ones = torch.ones(b, device=device, dtype=x.dtype)
    for position in range(4):  # each sample applies its jitter ops in its own order
        op = p.order[:, position].to(device, non_blocking=True)
        active = p.jitter.to(device, non_blocking=True)
        f = ones.clone()  # [B] blend factor, 1 = untouched
        for k in range(3):
            f = torch.where(active & (op == k), factors[:, k], f)
        gray = grayscale(x)  # [B,1,H,W]
        other = torch.where(
            (op == 2).view(-1, 1, 1, 1),
            gray,
            (op == 1).view(-1, 1, 1, 1) * gray.mean(dim=(1, 2, 3), keepdim=True),
        )
        f4 = f.view(-1, 1, 1, 1)
        x = (f4 * x + (1 - f4) * other).clamp_(
            0, 1
        )  # a new tensor: the caller's x is never written
        rows = _rows(p.jitter & (p.order[:, position] == 3), device)
        if rows is not None:
            x[rows] = adjust_hue(x[rows], factors[rows, 3])
    gray_f = (~p.gray).to(device, x.dtype, non_blocking=True).view(-1, 1, 1, 1)  # 0: grey sample
    gray = grayscale(x)
    x = x.mul_(gray_f).add_((1 - gray_f) * gray)
    rows = _rows(p.blur, device)
    if rows is not None:
        x[rows] = gaussian_blur(x[rows], p.sigma.to(device, non_blocking=True)[rows])
    rows = _rows(p.flip, device)
    if rows is not None:
        x[rows] = x[rows].flip(-1)
    return x.sub_(MEAN.to(device, x.dtype)).div_(STD.to(device, x.dtype))
