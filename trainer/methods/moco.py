"""MoCo v2 with non-semantic negatives, after facebookresearch/moco ``moco/builder.py``.

Symbols as in the papers: query encoder (``encoder_q``), momentum key encoder
(``encoder_k``, momentum ``m``), a queue of ``K`` keys, temperature ``T``. Non-semantic
negatives ``t`` (the image's texture, patch-shuffled views) are encoded by the key
encoder without gradient and enter the softmax with logit ``alpha * q.t / T``; they are
never enqueued (Ge et al. 2021).

Batch-norm must not see a key and its query in the same statistics (MoCo's "shuffle
BN"): with DDP the keys are shuffled across GPUs; in one process every BN computes
statistics over ``bn_splits`` chunks of the batch, as if on that many GPUs, and the keys
are shuffled so that none lands in its query's chunk. A backbone without batch norm (a
ViT, a ConvNeXt) needs neither: its keys are encoded as they come.

Loss: InfoNCE over ``[q.k, q.queue, alpha q.t_1 .. alpha q.t_N] / T`` with the key as target.
Metrics: ``acc``, how often ``q.k`` is the largest of ``[q.k, q.queue]`` (instance
discrimination, the NS negatives left out); ``ns_outrank``, how often an NS logit
``alpha q.t / T`` exceeds the positive's ``q.k / T`` (per query and negative).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightly.models.modules.heads import MoCoProjectionHead
from torch import nn

from nsneg.trainer.backbones import build_trunk, has_batch_norm, replace_batch_norm
from nsneg.trainer.methods.base import (
    Method,
    OptimDefaults,
    concat_all_gather,
    distributed,
    ema_update,
    memory_format_of,
)
from nsneg.trainer.methods.settings import MoCoSettings
from nsneg.trainer.negatives import contrast_metrics

if TYPE_CHECKING:
    from nsneg.trainer.config import TrainConfig


class _ChunkedBatchNorm(torch.autograd.Function):
    """Training-mode BN over ``s`` chunks along N, each chunk normalised with its own statistics.

    The chunks of the input, the output and the input's gradient are slices along N, hence
    contiguous in NCHW and channels_last alike: the native kernels read and write them in
    place (``out=`` variants), so no layer copies an activation or its gradient.
    """

    @staticmethod
    def forward(
        ctx,
        x,
        weight,
        bias,
        running: list[tuple[torch.Tensor, torch.Tensor]],
        momentum: float,
        eps: float,
    ):
        out = torch.empty_like(x)  # [N, C, H, W] in x's memory format
        saved = []
        for x_b, out_b, (mean_b, var_b) in zip(
            x.chunk(len(running)), out.chunk(len(running)), running
        ):
            save_mean, save_invstd = torch.empty_like(mean_b), torch.empty_like(mean_b)  # [C]
            torch.ops.aten.native_batch_norm.out(
                x_b,
                weight,
                bias,
                mean_b,
                var_b,
                True,
                momentum,
                eps,
                out=out_b,
                save_mean=save_mean,
                save_invstd=save_invstd,
            )
            saved += [save_mean, save_invstd]
        ctx.save_for_backward(x, weight, *saved)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, *saved = ctx.saved_tensors
        s = len(saved) // 2
        grad_out = grad_out.contiguous(memory_format=memory_format_of(x))
        grad_x = torch.empty_like(x)
        grad_b = torch.empty(s, *weight.shape, dtype=weight.dtype, device=weight.device)
        grad_w = torch.empty_like(grad_b)
        for b, (x_b, g_b, gx_b) in enumerate(zip(x.chunk(s), grad_out.chunk(s), grad_x.chunk(s))):
            torch.ops.aten.native_batch_norm_backward.out(
                g_b,
                x_b,
                weight,
                None,
                None,
                saved[2 * b],
                saved[2 * b + 1],
                True,
                ctx.eps,
                [True, True, True],
                out0=gx_b,
                out1=grad_w[b],
                out2=grad_b[b],
            )
        return grad_x, grad_w.sum(dim=0), grad_b.sum(dim=0), None, None, None


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics come from ``num_splits`` sub-batches separately,
    so one process behaves like MoCo's per-GPU BN on that many GPUs.

    Sub-batch ``b`` is the ``b``-th chunk along N (samples ``b*n/s ... (b+1)*n/s - 1``):
    a slice along N is contiguous in NCHW and in channels_last alike, so no layer copies
    its input into another layout (a ``[N/s, C*s, H, W]`` reshape would, in channels_last).
    Running statistics are the mean of the sub-batches' updates, as MoCo's demo keeps them.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        if x.shape[0] % self.num_splits:
            raise ValueError(f"batch {x.shape[0]} is not divisible by bn_splits {self.num_splits}")
        running = [
            (self.running_mean.clone(), self.running_var.clone()) for _ in range(self.num_splits)
        ]
        out = _ChunkedBatchNorm.apply(x, self.weight, self.bias, running, self.momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(torch.stack([mean_b for mean_b, _ in running]).mean(dim=0))
            self.running_var.copy_(torch.stack([var_b for _, var_b in running]).mean(dim=0))
        return out


def bn_splits_of(encoder: nn.Module) -> int:
    """How many BN sub-batches ``encoder`` normalises over (1 without split BN)."""
    return next((m.num_splits for m in encoder.modules() if isinstance(m, SplitBatchNorm2d)), 1)


def shuffle_across_splits(
    n: int, splits: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random order of ``n`` samples in which no sample stays in its own sub-batch (chunk along N).

    Samples are laid out as ``[splits, n/splits]`` (sub-batch, position), shuffled within
    each sub-batch; position ``p`` of sub-batch ``b`` then takes the sample at position ``p``
    of sub-batch ``(b + r_p) mod splits`` with a random ``r_p`` in ``1 .. splits-1``. So a key
    is never normalised with the statistics its query is normalised with (shuffle BN).
    """
    if splits == 1:
        return torch.randperm(n, generator=generator)
    m = n // splits
    within = torch.argsort(torch.rand(splits, m, generator=generator), dim=1) + m * torch.arange(
        splits
    ).view(-1, 1)
    shift = torch.randint(1, splits, (m,), generator=generator)  # [m]
    source = (
        torch.arange(splits).view(-1, 1) + shift
    ) % splits  # [splits, m]: sub-batch each slot takes from
    return within.gather(0, source).flatten()  # [n]


def build_backbone(
    arch: str,
    dim: int = MoCoSettings.dim,
    bn_splits: int = 1,
    small_images: bool = False,
    image_size: int = 224,
) -> nn.Module:
    """A backbone (``nsneg.trainer.backbones``) whose classifier is MoCo v2's 2-layer MLP head
    (lightly's ``MoCoProjectionHead``: Linear - ReLU - Linear): for a ResNet ``fc`` is the head, the
    keys of MoCo's checkpoints. Its batch norm layers (if any) are ``SplitBatchNorm2d`` over
    ``bn_splits`` sub-batches."""
    head = lambda d: MoCoProjectionHead(d, d, dim)  # noqa: E731
    net, _ = build_trunk(arch, small_images=small_images, image_size=image_size, head=head)
    if bn_splits > 1:
        replace_batch_norm(net, lambda c: SplitBatchNorm2d(c, bn_splits))
    return net


class MoCo(Method):
    name = "moco"
    #: MoCo v2 (Chen et al. 2020): SGD, momentum 0.9, lr 0.03 per 256 there; 0.4 per 256 here for
    #: the paper's batch of 512 (lr 0.8), weight decay 1e-4, cosine schedule without warm-up
    defaults = OptimDefaults(optimizer="sgd", lr_per_256=0.4, weight_decay=1e-4, warmup_epochs=0)
    Settings = MoCoSettings
    backbone_passes = (1, 1)  # the query; the key

    def __init__(
        self,
        encoder_q: nn.Module,
        encoder_k: nn.Module,
        dim: int = MoCoSettings.dim,
        K: int = MoCoSettings.k,
        m: float = MoCoSettings.m,
        T: float = MoCoSettings.t,
        alpha: float = 2.0,
    ):
        super().__init__()
        self.K, self.m, self.T, self.alpha = K, m, T, alpha
        self.encoder_q, self.encoder_k = encoder_q, encoder_k
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data.copy_(param_q.data)
            param_k.requires_grad = False
        self.bn_splits = bn_splits_of(encoder_k)
        self.shuffle_bn = has_batch_norm(encoder_k)  # a network without BN needs no key shuffle
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @classmethod
    def from_config(cls, config: TrainConfig, bn_splits: int) -> MoCo:
        c, s = config, config.method_settings
        encoders = [
            build_backbone(c.arch, s.dim, bn_splits, c.small_images, c.image_size) for _ in range(2)
        ]
        return cls(*encoders, dim=s.dim, K=s.k, m=s.m, T=s.t, alpha=c.alpha)

    @property
    def backbone(self) -> nn.Module:
        return self.encoder_q  # its fc is the MLP head

    def check_global_batch(self, batch_size: int) -> None:
        if self.K % batch_size:
            raise ValueError(f"--moco-k {self.K} must be a multiple of --batch-size {batch_size}")

    def trained_modules(self) -> list[nn.Module]:
        return [self.encoder_q]

    def compiled_modules(self) -> list[nn.Module]:
        return [self.encoder_q, self.encoder_k]

    @torch.no_grad()
    def _momentum_update_key_encoder(self) -> None:
        """k <- m k + (1 - m) q over all parameters at once (foreach kernels, no per-tensor launch)."""
        ema_update(list(self.encoder_k.parameters()), list(self.encoder_q.parameters()), self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Write the keys at the queue pointer, on the device (no host synchronisation)."""
        if distributed():
            keys = concat_all_gather(keys)
        batch_size = keys.shape[0]
        if self.K % batch_size:
            raise ValueError(
                f"queue size K={self.K} must be a multiple of the global batch {batch_size}"
            )
        slots = self.queue_ptr + torch.arange(batch_size, device=self.queue_ptr.device)  # [B]
        self.queue.index_copy_(1, slots, keys.T.to(self.queue.dtype))
        self.queue_ptr.add_(batch_size).remainder_(self.K)

    @torch.no_grad()
    def _encode_keys(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Key encoder on a shuffled batch (shuffle BN), features returned in the original order."""
        if not self.shuffle_bn:
            return F.normalize(self.encoder_k(x), dim=1)
        if distributed():
            x_all = concat_all_gather(x)
            idx_shuffle = torch.randperm(x_all.shape[0], device=x.device)
            dist.broadcast(idx_shuffle, src=0)
            idx_this = idx_shuffle.view(dist.get_world_size(), -1)[dist.get_rank()]
            k = F.normalize(self.encoder_k(x_all[idx_this]), dim=1)
            idx_unshuffle = torch.argsort(idx_shuffle).view(dist.get_world_size(), -1)[
                dist.get_rank()
            ]
            return concat_all_gather(k)[idx_unshuffle]
        idx_shuffle = shuffle_across_splits(x.shape[0], self.bn_splits, generator).to(
            x.device, non_blocking=True
        )
        k = F.normalize(self.encoder_k(x[idx_shuffle]), dim=1)
        return k[torch.argsort(idx_shuffle)]

    def forward(
        self,
        im_1: torch.Tensor,
        im_2: torch.Tensor,
        im_ns: torch.Tensor | None = None,
        *,
        progress: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The method interface: query view, key view, NS negatives -> InfoNCE loss, metrics."""
        logits, labels = self.logits(im_1, im_2, im_ns, generator=generator)
        loss = F.cross_entropy(logits.float(), labels)
        n_ns = im_ns.shape[1] if im_ns is not None else 0
        l_pos, l_neg, l_ns = logits.detach().float().split([1, self.K, n_ns], dim=1)
        return loss, contrast_metrics(l_pos.squeeze(1), l_neg, l_ns if n_ns else None)

    def logits(
        self,
        im_q: torch.Tensor,
        im_k: torch.Tensor,
        im_t: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """im_q, im_k: [B,3,H,W]; im_t: non-semantic negatives [B,N,3,H,W] or None. -> logits, labels
        (the official builder's ``forward``)."""
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self._momentum_update_key_encoder()
            k = self._encode_keys(im_k, generator)
            fmt = memory_format_of(im_k)
            ts = [
                self._encode_keys(im_t[:, n].contiguous(memory_format=fmt), generator)
                for n in range(im_t.shape[1] if im_t is not None else 0)
            ]
        l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", q, self.queue.clone().detach())
        l_nonsem = [self.alpha * torch.einsum("nc,nc->n", q, t).unsqueeze(-1) for t in ts]
        logits = torch.cat([l_pos, l_neg, *l_nonsem], dim=1) / self.T
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self._dequeue_and_enqueue(k)
        return logits, labels
