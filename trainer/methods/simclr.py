"""SimCLR (Chen et al. 2020) with non-semantic negatives.

Backbone ``f`` and projector ``g``; for the two views of a batch ``z = g(f(v))``, L2-normalised.
NT-Xent: each of the ``2B`` views of the global batch (gathered across ranks, with gradient) is an
anchor whose positive is its other view and whose negatives are the other ``2B - 2`` views::

    l(i) = -log( exp(z_i.z_j(i) / T) / sum_{k != i} exp(z_i.z_k / T) ),  L = mean_i l(i)

laid out as lightly's ``NTXentLoss`` lays it out (rows: this rank's view-1 then view-2 anchors;
columns: the other view of every image, then the same view of every other image).

Non-semantic negatives enter every anchor's softmax as in MoCo, with logit ``alpha z_i.t_n / T``
for each NS negative ``t_n = g(f(x_ns,n))`` of the anchor's own image (both views of an image
share them: they are non-semantic versions of that image). They are encoded without gradient
(as MoCo encodes them with its key encoder) and without changing the BN running statistics that
evaluation uses (``frozen_bn_statistics``). Without NS negatives (``none``) this is plain SimCLR.

Metrics: ``acc``, how often an anchor's positive is above all its regular negatives;
``ns_outrank``, how often an NS logit is above the positive's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightly.models.modules.heads import SimCLRProjectionHead
from torch import nn

from nsneg.trainer.backbones import build_trunk
from nsneg.trainer.methods.base import (
    Method,
    OptimDefaults,
    distributed,
    frozen_bn_statistics,
    memory_format_of,
)
from nsneg.trainer.methods.settings import SimCLRSettings
from nsneg.trainer.negatives import contrast_metrics, nonsemantic_logits

if TYPE_CHECKING:
    from nsneg.trainer.config import TrainConfig


class SimCLR(Method):
    name = "simclr"
    #: solo-learn's SimCLR on ImageNet-100 (scripts/pretrain/imagenet-100/simclr.yaml): LARS, lr 0.3
    #: at a batch of 256, weight decay 1e-4, 10 warm-up epochs then cosine
    defaults = OptimDefaults(optimizer="lars", lr_per_256=0.3, weight_decay=1e-4, warmup_epochs=10)
    Settings = SimCLRSettings
    backbone_passes = (2, 0)  # both views; the negatives without gradient

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        proj_hidden_dim: int = SimCLRSettings.proj_hidden_dim,
        proj_dim: int = SimCLRSettings.proj_dim,
        T: float = SimCLRSettings.t,
        alpha: float = 2.0,
    ):
        super().__init__()
        self.T, self.alpha = T, alpha
        self.backbone = backbone  # f
        self.projector = SimCLRProjectionHead(
            feature_dim, proj_hidden_dim, proj_dim, batch_norm=False
        )  # g

    @classmethod
    def from_config(cls, config: TrainConfig, bn_splits: int) -> SimCLR:
        c, s = config, config.method_settings
        backbone, feature_dim = build_trunk(
            c.arch, small_images=c.small_images, image_size=c.image_size
        )
        return cls(
            backbone,
            feature_dim,
            proj_hidden_dim=s.proj_hidden_dim,
            proj_dim=s.proj_dim,
            T=s.t,
            alpha=c.alpha,
        )

    def trained_modules(self) -> list[nn.Module]:
        return [self.backbone, self.projector]

    def compiled_modules(self) -> list[nn.Module]:
        return [self.backbone]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] -> z [B, D], L2-normalised."""
        return F.normalize(self.projector(self.backbone(x)).float(), dim=1)

    def forward(
        self,
        im_1: torch.Tensor,
        im_2: torch.Tensor,
        im_ns: torch.Tensor | None = None,
        *,
        progress: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z_1, z_2 = self.project(im_1), self.project(im_2)  # [B, D]
        t = None
        if im_ns is not None:
            fmt = memory_format_of(im_1)
            with torch.no_grad(), frozen_bn_statistics(self):
                t = torch.stack(
                    [
                        self.project(im_ns[:, n].contiguous(memory_format=fmt))
                        for n in range(im_ns.shape[1])
                    ],
                    dim=1,
                )  # [B, N, D]
        loss, logits, labels = nt_xent(z_1, z_2, self.T, t, self.alpha)
        with torch.no_grad():
            logits = logits.detach()
            n_ns = t.shape[1] if t is not None else 0
            l_pos = logits.gather(1, labels.unsqueeze(1)).squeeze(1)  # [2B]
            regular = logits[:, : logits.shape[1] - n_ns].scatter(
                1, labels.unsqueeze(1), float("-inf")
            )  # [2B, 2B_global - 1] without the positive
            l_ns = logits[:, logits.shape[1] - n_ns :] if n_ns else None
        return loss, contrast_metrics(l_pos, regular, l_ns)


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated along dim 0, gradients flowing back to each rank's part."""
    import torch.distributed.nn.functional as dist_nn

    return torch.cat(dist_nn.all_gather(x))


def nt_xent(
    z_1: torch.Tensor,
    z_2: torch.Tensor,
    T: float,
    t: torch.Tensor | None = None,
    alpha: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NT-Xent over the global batch, with NS negatives -> (loss, logits [2B, 2B_g - 1 + N], labels [2B]).

    z_1, z_2: [B, D] L2-normalised projections of the two views on this rank; under DDP the
    candidates are gathered from every rank (with gradient). t: [B, N, D] L2-normalised NS
    negatives of each image, or None: then the loss equals lightly's ``NTXentLoss(T)`` on (z_1, z_2).
    """
    b = z_1.shape[0]
    if distributed():
        z_1_all, z_2_all, offset = (
            _gather_with_grad(z_1),
            _gather_with_grad(z_2),
            dist.get_rank() * b,
        )
    else:
        z_1_all, z_2_all, offset = z_1, z_2, 0
    own = torch.zeros(b, z_1_all.shape[0], dtype=torch.bool, device=z_1.device)  # [B, B_g]
    own[torch.arange(b), offset + torch.arange(b)] = True
    l_11 = (z_1 @ z_1_all.T / T)[~own].view(b, -1)  # [B, B_g - 1] same view, other images
    l_12 = z_1 @ z_2_all.T / T  # [B, B_g] other view, positive at offset + i
    l_21 = z_2 @ z_1_all.T / T
    l_22 = (z_2 @ z_2_all.T / T)[~own].view(b, -1)
    rows = [torch.cat([l_12, l_11], dim=1), torch.cat([l_21, l_22], dim=1)]  # [B, 2B_g - 1] each
    if t is not None:
        rows = [
            torch.cat([r, nonsemantic_logits(z, t, alpha, T)], dim=1)
            for r, z in zip(rows, (z_1, z_2))
        ]
    logits = torch.cat(rows, dim=0)  # [2B, 2B_g - 1 (+ N)]
    labels = (offset + torch.arange(b, device=z_1.device)).repeat(2)  # [2B]
    return F.cross_entropy(logits, labels), logits, labels
