"""Non-semantic (NS) negatives (Ge et al., NeurIPS 2021) as plain functions for any training code.

Making them: ``texture_negative`` (an image's texture with its anchor view's augmentation; the
loader gives the texture its anchor's crop, ``nsneg.trainer.crops.crop_box`` / ``apply_box``) and
``patch_negatives`` (patch-shuffled copies of a view). Scoring them: ``nonsemantic_logits`` (the
paper's ``alpha * q.t / T``), ``nonsemantic_contrast_loss`` (a softmax term of an anchor's
positive against its NS negatives, for methods without negatives such as BYOL) and
``contrast_metrics`` (instance-discrimination accuracy without them; how often one outranks the
positive). Their use in MoCo, BYOL and SimCLR: ``nsneg.trainer.methods``.

Patch-based negatives, batched on the tensor's device:
A negative of a view is that view cut into s x s patches taken from random places and
tiled back onto a canvas of the view's size: local texture survives, layout and shape do
not. The paper's released code builds each negative with Python loops over images and
patches on the CPU. Here one flat source index per output pixel is built from a few
small per-tile tensors and the whole batch is read with a single ``gather`` on the views'
device: no Python loop over images or patches, and the same code runs on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nsneg.trainer.augment import PhotometricParams, augment

__all__ = [
    "contrast_metrics",
    "nonsemantic_contrast_loss",
    "nonsemantic_logits",
    "patch_negatives",
    "texture_negative",
]

#: The view size that ``size_range`` refers to (the paper's 224 px crops).
REFERENCE_SIZE = 224


def _scaled_range(size_range: tuple[int, int], h: int, w: int) -> tuple[int, int]:
    lo, hi = (int(v) for v in size_range)
    if not 1 <= lo <= hi:
        raise ValueError(f"size_range must satisfy 1 <= min <= max, got {size_range}")
    lo, hi = (max(1, round(v * h / REFERENCE_SIZE)) for v in (lo, hi))
    limit = min(h, w)  # a whole s x s patch must fit inside the view
    return min(lo, limit), min(hi, limit)


def patch_negatives(
    views: torch.Tensor,
    num: int = 1,
    size_range: tuple[int, int] = (16, 72),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``num`` patch-based negatives per view: ``[B, 3, H, W]`` in, ``[B, num, 3, H, W]`` out.

    For each image and each negative independently a patch size ``s`` is drawn uniformly
    from ``size_range`` (given for 224 px views, scaled by ``H / 224``, at least 1 px, at
    most ``min(H, W)``); the canvas is covered by ``ceil(H/s) x ceil(W/s)`` tiles of
    ``s x s`` (last row and column cropped), each copied from an independent, uniformly
    random position of the same view. All randomness comes from ``generator`` (drawn on
    its device, or the CPU without one), so the result is reproducible from its seed.
    """
    if views.dim() != 4:
        raise ValueError(f"views must be [B, C, H, W], got shape {tuple(views.shape)}")
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    b, c, h, w = views.shape
    lo, hi = _scaled_range(size_range, h, w)
    device = views.device
    rng_device = generator.device if generator is not None else torch.device("cpu")
    ty_n, tx_n = -(-h // lo), -(-w // lo)  # most tiles per column / row (smallest patch)

    # Small random draws: a patch size per negative, a patch origin per tile.
    s = torch.randint(lo, hi + 1, (b * num, 1), generator=generator, device=rng_device)
    u = torch.rand(
        (2, b * num, ty_n, tx_n), generator=generator, device=rng_device, dtype=torch.float64
    )
    s, u = s.to(device), u.to(device)
    py = (u[0] * (h - s + 1).unsqueeze(-1)).long()  # in [0, H - s]
    px = (u[1] * (w - s + 1).unsqueeze(-1)).long()  # in [0, W - s]

    # Source of pixel (y, x) in tile (ty, tx) is (py + y - ty*s, px + x - tx*s): the flat
    # index is y*W + x plus a per-tile shift, so only the shift needs spreading over tiles.
    tiles = torch.arange(max(ty_n, tx_n), device=device) * s  # [BN, T]: tile start rows/cols
    shift = (py - tiles[:, :ty_n, None]) * w + (px - tiles[:, None, :tx_n])  # [BN, Ty, Tx]
    ty = torch.arange(h, device=device) // s  # [BN, H] tile row of each pixel row
    tx = torch.arange(w, device=device) // s  # [BN, W] tile column of each pixel column
    rows = shift.gather(1, ty.unsqueeze(-1).expand(-1, -1, tx_n))  # [BN, H, Tx]
    rows += (torch.arange(h, device=device) * w).unsqueeze(-1)
    index = rows.gather(2, tx.unsqueeze(1).expand(-1, h, -1))  # [BN, H, W]
    index += torch.arange(w, device=device)

    index = index.view(b, num, 1, h * w).expand(b, num, c, h * w)
    source = views.reshape(b, 1, c, h * w).expand(b, num, c, h * w)
    return source.gather(3, index).view(b, num, c, h, w)


def texture_negative(texture: torch.Tensor, params_anchor: PhotometricParams) -> torch.Tensor:
    """The texture negative of each anchor: ``[B, 3, H, W]`` float in [0, 1] -> augmented ``[B, 1, 3, H, W]``.

    ``texture`` is the texture cropped with the anchor's crop box (``nsneg.trainer.crops`` does it);
    it gets the anchor's colour jitter, grayscale, blur, flip and normalisation (``params_anchor``,
    the ``nsneg.trainer.augment.sample_params`` draw that made the anchor), so that it differs from
    the anchor in semantics only, not in crop or colour.
    """
    return augment(texture, params_anchor).unsqueeze(1)


def nonsemantic_logits(
    anchor: torch.Tensor, negatives: torch.Tensor, alpha: float, T: float
) -> torch.Tensor:
    """``alpha * a.t / T`` for every anchor and each of its own NS negatives: ``[B, D]``, ``[B, N, D]``
    (both L2-normalised) -> ``[B, N]``. ``alpha > 1`` makes NS negatives harder than regular ones."""
    return alpha * torch.einsum("bd,bnd->bn", anchor, negatives) / T


def nonsemantic_contrast_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, alpha: float, T: float
) -> torch.Tensor:
    """Mean over anchors of ``-log softmax([a.p / T, alpha a.t_1 / T, ..., alpha a.t_N / T])[0]``.

    anchor, positive: ``[B, D]``, negatives: ``[B, N, D]``, all L2-normalised: the positive must
    outrank the anchor's NS negatives, scored as in MoCo's logits. An NS-negative term for methods
    that have no softmax of their own (BYOL).
    """
    l_pos = torch.einsum("bd,bd->b", anchor, positive).unsqueeze(1) / T  # [B, 1]
    logits = torch.cat([l_pos, nonsemantic_logits(anchor, negatives, alpha, T)], dim=1)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), labels)


@torch.no_grad()
def contrast_metrics(
    l_pos: torch.Tensor, l_neg: torch.Tensor | None, l_ns: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Device scalars (no host synchronisation) from the logits an anchor is scored with.

    l_pos: ``[B]`` the positive's; l_neg: ``[B, K]`` the regular negatives' (None: the method has
    none); l_ns: ``[B, N]`` the NS negatives' (None: no NS negatives).
      ``acc``: fraction of anchors whose positive is above all regular negatives (instance
        discrimination; NS negatives are left out, their ``alpha`` makes them win by design early on);
      ``ns_outrank``: fraction of (anchor, NS negative) pairs whose NS logit is above the positive's.
    """
    metrics = {}
    if l_neg is not None:
        metrics["acc"] = (l_pos > l_neg.amax(dim=1)).float().mean()
    if l_ns is not None:
        metrics["ns_outrank"] = (l_ns > l_pos.unsqueeze(1)).float().mean()
    return metrics
