"""Backbones by name: any torchvision classification model (``resnet50``, ``convnext_tiny``,
``vit_b_16``, ...) or any timm model (``timm:NAME``, the ``nsneg[timm]`` extra), randomly initialised.

The trunk is built the same way for all: the model is made with a one-class classifier, the
last ``nn.Linear`` with one output is that classifier, its ``in_features`` is the feature size,
and it is replaced (whatever its name: ``fc``, ``classifier.2``, ``heads.head``, ``head.fc``)
by the identity or by a method's projection head. The network then maps ``[B, 3, H, W]`` to
pooled features ``[B, D]``; the replaced module's name is kept as ``net.head_name`` so that the
evaluated weights leave the head out (``methods.base.without_head``).

Models whose input size is fixed at construction (vision transformers) are made for the run's
``image_size`` (torchvision's ``image_size``, timm's ``img_size``). ``small_images`` swaps a
ResNet's stem for a 3x3 stride-1 convolution without max-pool (as for CIFAR), for 32-96 px
training; other models keep theirs.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
import torchvision
from torch import nn

TIMM_PREFIX = "timm:"
#: torchvision's model families that are not image classifiers
_NOT_CLASSIFIERS = ("detection", "segmentation", "video", "optical_flow", "quantization")
_HOW_TO_LIST = (
    "torchvision.models.list_models(module=torchvision.models) lists torchvision's, "
    "timm.list_models() timm's (as timm:NAME)"
)


def torchvision_classifiers() -> list[str]:
    """The names ``torchvision.models.get_model`` builds as image classifiers (registered ones included)."""
    from torchvision.models import _api

    return sorted(
        name
        for name, fn in _api.BUILTIN_MODELS.items()
        if not any(f"torchvision.models.{family}" in fn.__module__ for family in _NOT_CLASSIFIERS)
    )


def check_arch(arch: str) -> None:
    """Raise ValueError (one line, saying where valid names are listed) for a name no library builds."""
    if arch.startswith(TIMM_PREFIX):
        try:
            import timm
        except ImportError:
            raise ValueError(f"--arch {arch} needs timm: pip install 'nsneg[timm]'") from None
        name = arch[len(TIMM_PREFIX) :]
        if not timm.is_model(name):
            near = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f" (did you mean {', '.join(TIMM_PREFIX + n for n in near)}?)" if near else ""
            raise ValueError(f"--arch {arch}: timm has no model {name!r}{hint}; {_HOW_TO_LIST}")
        return
    known = torchvision_classifiers()
    if arch not in known:
        near = difflib.get_close_matches(arch, known, n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ValueError(
            f"--arch {arch}: not a torchvision classification model{hint}; {_HOW_TO_LIST}"
        )


def _classifier(arch: str, image_size: int) -> nn.Module:
    """The named model, random weights, one class; built for ``image_size`` where it takes one."""
    if arch.startswith(TIMM_PREFIX):
        import timm

        def make(**size):
            return timm.create_model(
                arch[len(TIMM_PREFIX) :], pretrained=False, num_classes=1, **size
            )

        size = {"img_size": image_size}
    else:

        def make(**size):
            return torchvision.models.get_model(arch, weights=None, num_classes=1, **size)

        size = {"image_size": image_size}
    if image_size != 224:
        try:
            return make(**size)
        except TypeError:  # a model whose input size is not fixed at construction
            pass
    return make()


def build_trunk(
    arch: str,
    *,
    small_images: bool = False,
    image_size: int = 224,
    head: Callable[[int], nn.Module] | None = None,
) -> tuple[nn.Module, int]:
    """-> (network: [B, 3, H, W] -> pooled features [B, D] or ``head`` of them, D).

    ``head``: ``head(D)`` is put in the classifier's place (MoCo's MLP head), else the identity."""
    check_arch(arch)
    net = _classifier(arch, image_size)
    found = [
        (name, m)
        for name, m in net.named_modules()
        if isinstance(m, nn.Linear) and m.out_features == 1
    ]
    if not found:
        raise ValueError(f"--arch {arch}: no linear classifier found to take off (not supported)")
    name, classifier = found[-1]
    parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    dim = classifier.in_features
    setattr(parent, name.rpartition(".")[2], head(dim) if head is not None else nn.Identity())
    net.head_name = name
    if (
        small_images
        and isinstance(getattr(net, "conv1", None), nn.Conv2d)
        and hasattr(net, "maxpool")
    ):
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    return net, dim


def has_batch_norm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


@torch.no_grad()
def replace_batch_norm(net: nn.Module, make) -> nn.Module:
    """Every ``nn.BatchNorm2d`` of ``net`` replaced by ``make(num_features)`` (its weights,
    running statistics and settings carried over), in place."""
    for name, module in list(net.named_modules()):
        if type(module) is nn.BatchNorm2d:
            new = make(module.num_features)
            new.eps, new.momentum = module.eps, module.momentum
            new.load_state_dict(module.state_dict())
            parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
            setattr(parent, name.rpartition(".")[2], new)
    return net
