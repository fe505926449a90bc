"""BYOL built from lightly's blocks, trained against nsneg's non-semantic negatives.

lightly supplies the model (``BYOLProjectionHead``, ``BYOLPredictionHead``, ``update_momentum``,
``cosine_schedule``, ``NegativeCosineSimilarity``, as in its ``examples/pytorch/byol.py``); nsneg
supplies the data and the negatives through its library functions:

- ``nsneg.trainer.data.resolve_urls`` / ``make_loader``: batches of (query, key, texture) uint8
  crops from nsneg shards, the texture cropped with the query's box;
- ``nsneg.trainer.augment.sample_params`` / ``augment``: the photometric augmentation, batched;
- ``nsneg.trainer.negatives.texture_negative``: the texture with its query's augmentation;
- ``nsneg.trainer.negatives.patch_negatives``: patch-shuffled copies of the query view;
- ``nsneg.trainer.negatives.nonsemantic_contrast_loss`` / ``contrast_metrics``: the NS term
  and how often an NS negative outranks the positive.

    python docs/examples/lightly_byol_nsneg.py --shards shards/ --steps 100

``nsneg-train --method byol`` is the same method with nsneg's own trainer (checkpoints, resume,
DDP); this file shows how little other SSL code needs to add non-semantic negatives.
"""

from __future__ import annotations

import copy

import click
import torch
import torchvision
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from nsneg.trainer.augment import augment, sample_params
from nsneg.trainer.data import make_loader, resolve_urls
from nsneg.trainer.negatives import (
    contrast_metrics,
    nonsemantic_contrast_loss,
    nonsemantic_logits,
    patch_negatives,
    texture_negative,
)


class BYOL(nn.Module):
    """lightly's example model: backbone, projection head, prediction head, momentum copies."""

    def __init__(self, backbone: nn.Module, dim: int, hidden: int, out: int):
        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(dim, hidden, out)
        self.prediction_head = BYOLPredictionHead(out, hidden, out)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        return self.prediction_head(self.projection_head(self.backbone(x)))

    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x)).detach()


@click.command()
@click.option("--shards", required=True, help="an nsneg shard directory (or urls)")
@click.option("--steps", type=int, default=100, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--image-size", type=int, default=64, show_default=True)
@click.option("--alpha", type=float, default=2.0, show_default=True)
@click.option("--temperature", type=float, default=0.2, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
def main(shards, steps, batch_size, image_size, alpha, temperature, workers):
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    resnet.fc = nn.Identity()
    model = BYOL(resnet, 512, 1024, 256)
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    urls, _ = resolve_urls(shards)
    loader = make_loader(
        urls, batch_size=batch_size, image_size=image_size, steps=steps, workers=workers, seed=0
    )
    generator = torch.Generator().manual_seed(0)
    for step, (q, k, t, _skipped) in enumerate(loader):
        q, k, t = (x.float().div_(255) for x in (q, k, t))
        params_q = sample_params(q.shape[0], generator)
        x0, x1 = augment(q, params_q), augment(k, sample_params(k.shape[0], generator))
        ns = torch.cat([texture_negative(t, params_q), patch_negatives(x0, 1, generator=generator)], 1)

        momentum = cosine_schedule(step, steps, 0.996, 1)
        update_momentum(model.backbone, model.backbone_momentum, m=momentum)
        update_momentum(model.projection_head, model.projection_head_momentum, m=momentum)
        p0, p1 = model(x0), model(x1)
        z0, z1 = model.forward_momentum(x0), model.forward_momentum(x1)
        loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))  # lightly's BYOL loss

        # + the NS term: the other view's target must outrank the NS negatives' targets
        b, n = ns.shape[:2]
        z_ns = model.forward_momentum(ns.flatten(0, 1)).view(b, n, -1)
        unit = lambda x: nn.functional.normalize(x, dim=-1)  # noqa: E731
        ns_loss = 0.5 * (
            nonsemantic_contrast_loss(unit(p0), unit(z1), unit(z_ns), alpha, temperature)
            + nonsemantic_contrast_loss(unit(p1), unit(z0), unit(z_ns), alpha, temperature)
        )
        (loss + ns_loss).backward()
        optimizer.step()
        optimizer.zero_grad()

        with torch.no_grad():
            l_pos = (unit(p0) * unit(z1)).sum(1)
            outrank = contrast_metrics(l_pos, None, nonsemantic_logits(unit(p0), unit(z_ns), alpha, 1.0))
        print(
            f"step {step + 1}/{steps}  byol {loss.item():.4f}  ns {ns_loss.item():.4f}  "
            f"ns_outrank {outrank['ns_outrank'].item():.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
