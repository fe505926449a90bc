"""A method defined in one file, for the test that a new method is this file plus one line in
``nsneg.trainer.methods.METHODS``: in-batch InfoNCE on the backbone's pooled features (no
projector, no target network), the non-semantic negatives in each anchor's softmax with logit
``alpha z.t / T``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nsneg.trainer.backbones import build_trunk
from nsneg.trainer.methods.base import Method, OptimDefaults, memory_format_of
from nsneg.trainer.methods.settings import setting
from nsneg.trainer.negatives import contrast_metrics, nonsemantic_logits


@dataclass
class InBatchSettings:
    t: float = setting(0.5, "temperature")

    @classmethod
    def small(cls) -> InBatchSettings:
        return cls()


class InBatch(Method):
    name = "inbatch"
    defaults = OptimDefaults(optimizer="sgd", lr_per_256=0.1, weight_decay=0.0, warmup_epochs=0)
    Settings = InBatchSettings
    backbone_passes = (2, 0)

    def __init__(self, backbone: nn.Module, T: float = InBatchSettings.t, alpha: float = 2.0):
        super().__init__()
        self.backbone, self.T, self.alpha = backbone, T, alpha

    @classmethod
    def from_config(cls, config, bn_splits: int) -> InBatch:
        backbone, _ = build_trunk(
            config.arch, small_images=config.small_images, image_size=config.image_size
        )
        return cls(backbone, T=config.method_settings.t, alpha=config.alpha)

    def trained_modules(self) -> list[nn.Module]:
        return [self.backbone]

    def compiled_modules(self) -> list[nn.Module]:
        return [self.backbone]

    def forward(self, im_1, im_2, im_ns=None, *, progress=0.0, generator=None):
        z_1 = F.normalize(self.backbone(im_1).float(), dim=1)  # [B, D]
        z_2 = F.normalize(self.backbone(im_2).float(), dim=1)  # [B, D]
        logits = z_1 @ z_2.T / self.T  # [B, B], positives on the diagonal
        l_ns = None
        if im_ns is not None:
            fmt = memory_format_of(im_1)
            with torch.no_grad():
                t = torch.stack(
                    [
                        self.backbone(im_ns[:, n].contiguous(memory_format=fmt))
                        for n in range(im_ns.shape[1])
                    ],
                    dim=1,
                )
            l_ns = nonsemantic_logits(z_1, F.normalize(t.float(), dim=2), self.alpha, self.T)
            logits = torch.cat([logits, l_ns], dim=1)  # [B, B + N]
        labels = torch.arange(z_1.shape[0])
        loss = F.cross_entropy(logits, labels)
        b = z_1.shape[0]
        with torch.no_grad():
            pairs = logits[:, :b].detach()
            l_neg = pairs[~torch.eye(b, dtype=torch.bool)].view(b, -1)
        return loss, contrast_metrics(
            pairs.diagonal(), l_neg, None if l_ns is None else l_ns.detach()
        )
