"""Small members of real model families, registered with torchvision under names its builder
accepts (``torchvision.models.get_model``), so that the generic backbone path trains them on the
CPU in a test: ``convnext_nano_test`` (torchvision's ConvNeXt, two small stages) and
``vit_nano_test`` (torchvision's VisionTransformer, two layers of width 32)."""

from __future__ import annotations

from torchvision.models import _api
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.vision_transformer import VisionTransformer


def convnext_nano_test(*, weights=None, **kwargs) -> ConvNeXt:
    blocks = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)]
    return ConvNeXt(blocks, stochastic_depth_prob=0.0, **kwargs)


def vit_nano_test(*, weights=None, image_size: int = 224, **kwargs) -> VisionTransformer:
    return VisionTransformer(
        image_size=image_size, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
        mlp_dim=64, **kwargs,
    )  # fmt: skip


def register() -> None:
    """Make both known to ``torchvision.models.get_model`` (once per process)."""
    for fn in (convnext_nano_test, vit_nano_test):
        if fn.__name__ not in _api.BUILTIN_MODELS:
            _api.register_model()(fn)
