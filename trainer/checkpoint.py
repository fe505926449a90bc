"""Checkpoints: written atomically, loaded with ``weights_only=True``.

Ours (format ``nsneg-train``) hold everything needed to continue exactly (the method's state:
weights, target network or queue; optimiser, epoch, step, generators, config, the data's
identity) and, under a name no method owns, ``backbone``: the evaluated network's weights with
its model's keys (torchvision's or timm's), without head. ``load_backbone`` also reads the
paper's released MoCo checkpoints (``state_dict`` with ``module.encoder_q.*`` keys in a
``.pth.tar``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from nsneg.datasets_manifest.format.files import atomic_path
from nsneg.trainer.backbones import build_trunk

FORMAT = "nsneg-train"
VERSION = 3


def save(path: Path, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)


def _released_encoder_q(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The paper's ``module.encoder_q.*`` weights without the prefix nor the MLP head (``fc.*``)."""
    prefix = "module.encoder_q."
    return {
        k[len(prefix) :]: v
        for k, v in weights.items()
        if k.startswith(prefix) and not k[len(prefix) :].startswith("fc.")
    }


def _read(path: Path):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    return torch.load(path, map_location="cpu", weights_only=True)


def load(path: Path) -> dict[str, Any]:
    """An nsneg training checkpoint of this version; anything else is a clear ValueError."""
    state = _read(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an nsneg training checkpoint (expected format {FORMAT!r})")
    _check_version(path, state)
    return state


def _check_version(path: Path, state: dict[str, Any]) -> None:
    if state.get("version") != VERSION:
        raise ValueError(
            f"{path}: checkpoint version {state.get('version')}, this nsneg reads {VERSION}"
        )


def backbone_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The evaluated backbone's weights (no head) and the run's config, from our checkpoints of
    any method or the paper's released ones."""
    state = _read(path)
    if isinstance(state, dict) and "state_dict" in state and "format" not in state:
        weights = _released_encoder_q(state["state_dict"])
        if not weights:
            raise ValueError(
                f"{path}: no 'module.encoder_q.*' weights inside (keys look like "
                f"{list(state['state_dict'])[:3]})"
            )
        return weights, {"arch": state.get("arch", "resnet50")}
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{path}: expected an nsneg checkpoint or a MoCo checkpoint with a 'state_dict' of "
            "'module.encoder_q.*' keys"
        )
    _check_version(path, state)
    if not state.get("backbone"):
        raise ValueError(f"{path}: no backbone weights inside")
    return state["backbone"], state.get("config", {})


def load_backbone(path: Path, arch: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Frozen-ready backbone (no head, pooled features out) of a checkpoint, in eval mode."""
    weights, config = backbone_state(path)
    arch = arch or config.get("arch", "resnet50")
    encoder, _ = build_trunk(
        arch,
        small_images=config.get("small_images", False),
        image_size=int(config.get("image_size", 224)),
    )
    try:
        encoder.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit a {arch} backbone: {str(e)[:300]}") from None
    return encoder.eval(), config
