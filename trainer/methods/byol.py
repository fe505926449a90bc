"""BYOL (Grill et al. 2020) with non-semantic negatives.

Online network: backbone ``f_theta``, projector ``g_theta``, predictor ``q_theta``; target network:
backbone ``f_xi`` and projector ``g_xi``, an exponential moving average of the online ones,
``xi <- tau xi + (1 - tau) theta`` with ``tau`` rising from ``tau_base`` to 1 along a cosine over
the run (``tau = 1 - (1 - tau_base) (cos(pi progress) + 1) / 2``), done at the start of each step
as in lightly's BYOL example. For views ``v1, v2``: ``p_i = q_theta(g_theta(f_theta(v_i)))``,
``z_i = g_xi(f_xi(v_i))`` (no gradient), and the symmetric regression loss as lightly writes it
(``NegativeCosineSimilarity``, BYOL's ``2 - 2 cos`` up to its constant and a factor 2)::

    L_BYOL = -(cos(p_1, z_2) + cos(p_2, z_1)) / 2

Non-semantic negatives. BYOL has no softmax to put them in, and the paper's BYOL variant is not
in its released code, so the term is MoCo's, transferred: the target projections of the NS
negatives, ``t_n = g_xi(f_xi(x_ns,n))`` (no gradient, like MoCo's keys), compete with the other
view's target projection for each normalised prediction, with MoCo's logits ``p.z / T`` for the
positive and ``alpha p.t / T`` for an NS negative::

    L_NS(p, z) = -log( exp(p.z / T) / (exp(p.z / T) + sum_n exp(alpha p.t_n / T)) )
    L = L_BYOL + (L_NS(p_1, z_2) + L_NS(p_2, z_1)) / 2

Why this form: it is exactly how the NS negatives enter MoCo (same ``alpha``, a ``T`` of MoCo v2's
0.2 by default), it only pushes a prediction away from what carries no semantics (so it cannot
collapse, and needs no regular negatives), and where there are no NS negatives (``none``) it
vanishes and the method is plain BYOL. Both predictions are scored against the same NS
negatives: they are non-semantic versions of the same image, whichever view made them.

Metrics (from ``p_1``): ``acc``, how often ``p_1.z_2`` is above ``p_1`` against every other
image's ``z_2`` in the batch (instance discrimination, a readout only: BYOL does not optimise
it); ``ns_outrank``, how often ``alpha p_1.t_n`` is above ``p_1.z_2``; ``ns_loss``, the NS term.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity
from torch import nn

from nsneg.trainer.backbones import build_trunk
from nsneg.trainer.methods.base import (
    Method,
    OptimDefaults,
    ema_update,
    memory_format_of,
    mlp_head,
)
from nsneg.trainer.methods.settings import BYOLSettings
from nsneg.trainer.negatives import contrast_metrics, nonsemantic_contrast_loss, nonsemantic_logits

if TYPE_CHECKING:
    from nsneg.trainer.config import TrainConfig


class BYOL(Method):
    name = "byol"
    #: solo-learn's BYOL on ImageNet-100 (scripts/pretrain/imagenet-100/byol.yaml): LARS, lr 0.5 at a
    #: batch of 256, weight decay 1e-6, 10 warm-up epochs then cosine
    defaults = OptimDefaults(optimizer="lars", lr_per_256=0.5, weight_decay=1e-6, warmup_epochs=10)
    Settings = BYOLSettings
    backbone_passes = (2, 2)  # both views online; both views through the target

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        proj_hidden_dim: int = BYOLSettings.proj_hidden_dim,
        proj_dim: int = BYOLSettings.proj_dim,
        pred_hidden_dim: int = BYOLSettings.pred_hidden_dim,
        tau_base: float = BYOLSettings.tau_base,
        alpha: float = 2.0,
        T: float = BYOLSettings.ns_t,
    ):
        super().__init__()
        self.tau_base, self.alpha, self.T = tau_base, alpha, T
        self.backbone = backbone  # f_theta
        self.projector = mlp_head(feature_dim, proj_hidden_dim, proj_dim)  # g_theta
        self.predictor = mlp_head(proj_dim, pred_hidden_dim, proj_dim)  # q_theta
        self.backbone_target = copy.deepcopy(backbone)  # f_xi
        self.projector_target = copy.deepcopy(self.projector)  # g_xi
        for p in self._target_parameters():
            p.requires_grad = False

    @classmethod
    def from_config(cls, config: TrainConfig, bn_splits: int) -> BYOL:
        c, s = config, config.method_settings
        backbone, feature_dim = build_trunk(
            c.arch, small_images=c.small_images, image_size=c.image_size
        )
        return cls(
            backbone,
            feature_dim,
            proj_hidden_dim=s.proj_hidden_dim,
            proj_dim=s.proj_dim,
            pred_hidden_dim=s.pred_hidden_dim,
            tau_base=s.tau_base,
            alpha=c.alpha,
            T=s.ns_t,
        )

    def trained_modules(self) -> list[nn.Module]:
        return [self.backbone, self.projector, self.predictor]

    def compiled_modules(self) -> list[nn.Module]:
        return [self.backbone, self.backbone_target]

    def _online_parameters(self) -> list[torch.Tensor]:
        return [*self.backbone.parameters(), *self.projector.parameters()]

    def _target_parameters(self) -> list[torch.Tensor]:
        return [*self.backbone_target.parameters(), *self.projector_target.parameters()]

    def tau(self, progress: float) -> float:
        return 1 - (1 - self.tau_base) * (math.cos(math.pi * progress) + 1) / 2

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] -> p [B, D]."""
        return self.predictor(self.projector(self.backbone(x)))

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] -> z [B, D], without gradient."""
        return self.projector_target(self.backbone_target(x))

    def forward(
        self,
        im_1: torch.Tensor,
        im_2: torch.Tensor,
        im_ns: torch.Tensor | None = None,
        *,
        progress: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ema_update(self._target_parameters(), self._online_parameters(), self.tau(progress))
        p_1, p_2 = self.predict(im_1).float(), self.predict(im_2).float()  # [B, D]
        z_1, z_2 = self.target(im_1).float(), self.target(im_2).float()  # [B, D]
        loss = byol_loss(p_1, z_2, p_2, z_1)
        p_1, p_2, z_1, z_2 = (F.normalize(v, dim=1) for v in (p_1, p_2, z_1, z_2))
        with torch.no_grad():
            l_12 = p_1.detach() @ z_2.T  # [B, B]: p_1 against every image's z_2
            b = l_12.shape[0]
            l_neg = l_12[~torch.eye(b, dtype=torch.bool, device=l_12.device)].view(b, -1)
        if im_ns is None:
            return loss, contrast_metrics(l_12.diagonal(), l_neg if b > 1 else None, None)
        fmt = memory_format_of(im_1)
        t = torch.stack(
            [self.target(im_ns[:, n].contiguous(memory_format=fmt)) for n in range(im_ns.shape[1])],
            dim=1,
        )
        t = F.normalize(t.float(), dim=2)  # [B, N, D]
        ns_loss = (
            nonsemantic_contrast_loss(p_1, z_2, t, self.alpha, self.T)
            + nonsemantic_contrast_loss(p_2, z_1, t, self.alpha, self.T)
        ) / 2
        metrics = (
            contrast_metrics(  # the positive's p.z against alpha p.t, as in the loss (T cancels)
                l_12.diagonal(),
                l_neg if b > 1 else None,
                nonsemantic_logits(p_1.detach(), t, self.alpha, 1.0),
            )
        )
        metrics["ns_loss"] = ns_loss.detach()
        return loss + ns_loss, metrics


def byol_loss(
    p_1: torch.Tensor, z_2: torch.Tensor, p_2: torch.Tensor, z_1: torch.Tensor
) -> torch.Tensor:
    """BYOL's symmetric loss, ``-(cos(p_1, z_2) + cos(p_2, z_1)) / 2`` averaged over the batch: [B, D]
    each; lightly's ``NegativeCosineSimilarity`` as its BYOL example uses it."""
    criterion = NegativeCosineSimilarity()
    return 0.5 * (criterion(p_1, z_2) + criterion(p_2, z_1))
