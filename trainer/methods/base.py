"""What every pre-training method shares: the ``Method`` interface, its settings, MLP heads.

A method is an ``nn.Module`` whose ``forward`` takes one batch's two augmented views and its
non-semantic (NS) negatives and returns ``(loss, metrics)``; it owns everything that is not
optimised by gradient (momentum encoders, queues) and updates it inside ``forward``. The
``Trainer`` (``nsneg.trainer.train``) knows nothing else about it: it optimises
``trained_modules()``, compiles ``compiled_modules()``, checkpoints ``state_dict()`` and stores
``backbone_state_dict()`` under a method-independent name, the weights that evaluation reads.

A method's own settings are a dataclass (``Method.Settings``), each field made with
``nsneg.trainer.methods.settings.setting(default, help)``: ``TrainConfig`` holds the chosen
method's, and ``nsneg-train`` makes an option ``--<method>-<field>`` of each field. A new method is
one module (its ``Method`` subclass and its ``Settings``) and one line in
``nsneg.trainer.methods.REGISTRY``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from nsneg.trainer.methods.settings import NoSettings

if TYPE_CHECKING:
    from nsneg.trainer.config import TrainConfig


@dataclass(frozen=True)
class OptimDefaults:
    """A method's optimisation settings where the run gives none (``TrainConfig`` fields left None)."""

    optimizer: str  # "sgd" or "lars"
    lr_per_256: float  # base learning rate at a global batch of 256, scaled linearly with the batch
    weight_decay: float
    warmup_epochs: int  # linear warm-up before the cosine decay


class Method(nn.Module):
    """``forward(im_1, im_2, im_ns, *, progress, generator) -> (loss, metrics)``.

    im_1, im_2: [B, 3, H, W] two augmented views of each image; im_ns: [B, N, 3, H, W] non-semantic
    negatives of each image (made from view 1: its texture with view 1's crop and colour, patch-
    shuffled copies of view 1) or None; progress: the fraction of training done (0 at the first
    step) for schedules a method owns; generator: the run's CPU generator for any random choice.
    loss: a scalar with gradient; metrics: detached scalars, read by the trainer now and then.
    """

    name: ClassVar[str]
    defaults: ClassVar[OptimDefaults]
    #: the method's own settings: a dataclass of ``setting`` fields with a classmethod ``small()``,
    #: the few-dimensional variant CPU smoke runs and the tests train
    Settings: ClassVar[type] = NoSettings
    #: backbone passes per image and step: (forward+backward, forwards without gradient besides
    #: one per non-semantic negative); the throughput benchmark's ceiling counts them
    backbone_passes: ClassVar[tuple[int, int]]
    #: pooled features of an image; its ``fc`` (if any) is a projection head, left out of
    #: ``backbone_state_dict``
    backbone: nn.Module

    @classmethod
    def from_config(cls, config: TrainConfig, bn_splits: int) -> Method:
        raise NotImplementedError

    def check_global_batch(self, batch_size: int) -> None:
        """Raise ValueError where the method cannot run with this global batch."""

    def trained_modules(self) -> list[nn.Module]:
        """The modules whose parameters the optimiser updates."""
        raise NotImplementedError

    def compiled_modules(self) -> list[nn.Module]:
        """The networks ``--compile`` compiles (each one's first call compiles it)."""
        raise NotImplementedError

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone's weights with its model's keys (torchvision's, timm's), without the
        projection head that sits where the classifier was (``nsneg.trainer.backbones``)."""
        return without_head(self.backbone)


def without_head(net: nn.Module) -> dict[str, torch.Tensor]:
    """``net``'s weights minus those of the head ``backbones.build_trunk`` put in its classifier's place."""
    head = getattr(net, "head_name", None)
    prefix = f"{head}." if head else None
    return {k: v for k, v in net.state_dict().items() if not (prefix and k.startswith(prefix))}


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last where ``x`` [N, C, H, W] is laid out so, else the default (contiguous) format."""
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Module:
    """Linear - BatchNorm1d - ReLU - Linear, a lightly ``ProjectionHead``: BYOL's projector and
    predictor. [B, in_dim] -> [B, out_dim]. lightly's ``BYOLProjectionHead`` leaves out the first
    Linear's bias (redundant before BatchNorm); it is kept here, so the layers stay as they were."""
    from lightly.models.modules.heads import ProjectionHead

    return ProjectionHead(
        [
            (in_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(), True),
            (hidden_dim, out_dim, None, None),
        ]
    )


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated along dim 0 (no gradient)."""
    gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, x.contiguous())
    return torch.cat(gathered)


@torch.no_grad()
def ema_update(target: list[torch.Tensor], online: list[torch.Tensor], m: float) -> None:
    """target <- m target + (1 - m) online, over all tensors at once (foreach kernels)."""
    torch._foreach_mul_(target, m)
    torch._foreach_add_(target, [p.detach() for p in online], alpha=1.0 - m)


class frozen_bn_statistics:
    """Within the block, training-mode BatchNorm layers of ``module`` normalise with their batch's
    statistics but leave their running statistics as they were (momentum 0, the batch count
    put back).

    For forwards of images that evaluation must not be calibrated on (non-semantic negatives
    through the network whose running statistics evaluation uses)."""

    def __init__(self, module: nn.Module):
        self.layers = [
            m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]

    def __enter__(self):
        self.saved = [
            (m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
            for m in self.layers
        ]
        for m in self.layers:
            m.momentum = 0.0
        return self

    def __exit__(self, *exc):
        for m, (momentum, tracked) in zip(self.layers, self.saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
