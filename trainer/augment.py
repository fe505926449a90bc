"""MoCo v2 "aug-plus", split where it is cheapest and batched on the training device.

Geometry (RandomResizedCrop, scale 0.2-1) is done by the loader on decoded images
(``trainer.data``), which also gives the texture its query's crop. Everything else --
colour jitter 0.4/0.4/0.4/0.1 with p=0.8 in a random order, grayscale p=0.2, Gaussian
blur sigma in [0.1, 2] with p=0.5, horizontal flip, normalisation -- runs here on a
whole batch at once with per-sample parameters. The parameters are a value of their own
(``PhotometricParams``) so that the texture negative gets exactly its query's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import rgb_to_grayscale
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

from pipeline.encoders import IMAGENET_MEAN, IMAGENET_STD

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
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

    def to(self, device: torch.device) -> "PhotometricParams":
        return PhotometricParams(**{k: v.to(device) for k, v in vars(self).items()})


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


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp(0, 1)


def _jitter_op(op: int, x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    if op == 0:
        return (x * factors[:, 0].view(-1, 1, 1, 1)).clamp(0, 1)
    if op == 1:
        mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        return _blend(x, mean, factors[:, 1])
    if op == 2:
        return _blend(x, rgb_to_grayscale(x), factors[:, 2])
    hsv = _rgb_to_hsv(x)
    hue = (hsv[:, :1] + factors[:, 3].view(-1, 1, 1, 1)) % 1.0
    return _hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], dim=1))


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


def _apply_where(x: torch.Tensor, mask: torch.Tensor, fn) -> torch.Tensor:
    """In place: ``fn`` applied to the samples in ``mask`` only (computed on that subset)."""
    idx = mask.nonzero().squeeze(1)
    if idx.numel():
        x[idx] = fn(x[idx], idx)
    return x


def augment(x: torch.Tensor, p: PhotometricParams) -> torch.Tensor:
    """x: float [B,3,H,W] in [0,1] on any device -> augmented, normalised views."""
    p = p.to(x.device)
    x = x.clone()
    for position in range(4):  # each sample applies its jitter ops in its own order
        for op in range(4):
            mask = (p.order[:, position] == op) & p.jitter
            x = _apply_where(x, mask, lambda v, i, op=op: _jitter_op(op, v, p.factors[i]))
    x = _apply_where(x, p.gray, lambda v, i: rgb_to_grayscale(v, num_output_channels=3))
    x = _apply_where(x, p.blur, lambda v, i: gaussian_blur(v, p.sigma[i]))
    x = _apply_where(x, p.flip, lambda v, i: v.flip(-1))
    return (x - MEAN.to(x.device, x.dtype)) / STD.to(x.device, x.dtype)
