"""Checkpoints: written atomically, loaded with ``weights_only=True``.

Ours hold everything needed to continue exactly (model with queue, optimizer, epoch,
step, RNG states, config). ``load_backbone`` also reads the paper's released MoCo
checkpoints (``state_dict`` with ``module.encoder_q.*`` keys in a ``.pth.tar``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from nsneg.pipeline.files import atomic_path
from nsneg.trainer.moco import build_backbone, strip_projection_head

FORMAT = "nsneg-moco"
VERSION = 1


def save(path: Path, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)


def load(path: Path) -> dict[str, Any]:
    """An nsneg checkpoint; anything else is a clear error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an nsneg training checkpoint (expected format {FORMAT!r})")
    if state.get("version") != VERSION:
        raise ValueError(
            f"{path}: checkpoint version {state.get('version')}, this nsneg reads {VERSION}"
        )
    return state


def encoder_q_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The query encoder's weights (keys as torchvision's ResNet) and the run's config, from
    our checkpoints or the paper's released ones."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        weights, config = state["model"], state.get("config", {})
    elif isinstance(state, dict) and "state_dict" in state:
        weights, config = state["state_dict"], {"arch": state.get("arch", "resnet50")}
    else:
        raise ValueError(
            f"{path}: expected an nsneg checkpoint or a MoCo checkpoint with a 'state_dict' of "
            "'module.encoder_q.*' keys"
        )
    prefixes = ("module.encoder_q.", "encoder_q.")
    encoder = {k.split("encoder_q.", 1)[1]: v for k, v in weights.items() if k.startswith(prefixes)}
    if not encoder:
        raise ValueError(
            f"{path}: no 'encoder_q.*' weights inside (keys look like {list(weights)[:3]})"
        )
    return encoder, config


def load_backbone(path: Path, arch: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Frozen-ready backbone (MLP head removed, pooled features out) of a checkpoint, in eval mode."""
    weights, config = encoder_q_state(path)
    arch = arch or config.get("arch", "resnet50")
    encoder = build_backbone(
        arch,
        dim=weights["fc.2.weight"].shape[0] if "fc.2.weight" in weights else 128,
        small_images=config.get("small_images", False),
    )
    try:
        encoder.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{path}: weights do not fit a {arch} MoCo encoder: {str(e)[:300]}"
        ) from None
    return strip_projection_head(encoder).eval(), config
