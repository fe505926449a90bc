"""MoCo v2 with non-semantic negatives: moved to ``nsneg.trainer.methods.moco``, importable from here."""

from nsneg.trainer.methods.base import concat_all_gather, distributed
from nsneg.trainer.methods.moco import (
    MoCo,
    SplitBatchNorm2d,
    bn_splits_of,
    build_backbone,
    shuffle_across_splits,
    strip_projection_head,
)

__all__ = [
    "MoCo",
    "SplitBatchNorm2d",
    "bn_splits_of",
    "build_backbone",
    "concat_all_gather",
    "distributed",
    "shuffle_across_splits",
    "strip_projection_head",
]
