"""The optimiser and the learning-rate schedule of a run (``TrainConfig``'s ``lr``, ``optimizer``,
``weight_decay``, ``warmup_epochs``, or the method's defaults)."""

from __future__ import annotations

import math

import torch

from nsneg.trainer.config import TrainConfig
from nsneg.trainer.methods.base import Method


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up over ``warmup`` epochs, then a cosine to 0 at ``epochs * steps_per_epoch``."""
    total, warm = config.epochs * steps_per_epoch, config.warmup * steps_per_epoch
    if step < warm:
        return config.base_lr * (step + 1) / warm
    return config.base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / (total - warm))))


def build_optimizer(model: Method, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum 0.9) over all trained parameters, or LARS (lightly's) with biases and norm
    layers excluded from weight decay and from the trust ratio (as solo-learn's
    ``exclude_bias_n_norm``), trust coefficient 0.02 (solo-learn's ``eta``)."""
    params = [p for m in model.trained_modules() for p in m.parameters()]
    wd = config.weight_decay_value
    if config.optimizer_name == "sgd":
        return torch.optim.SGD(params, lr=config.base_lr, momentum=0.9, weight_decay=wd)
    from lightly.utils.lars import LARS

    decayed = [p for p in params if p.dim() > 1]
    excluded = [p for p in params if p.dim() <= 1]
    return LARS(
        [{"params": decayed, "weight_decay": wd}, {"params": excluded, "weight_decay": 0.0}],
        lr=config.base_lr,
        momentum=0.9,
        trust_coefficient=0.02,
    )
