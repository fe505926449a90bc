"""Checkpoints: written atomically, loaded with ``weights_only=True``.

Ours (format ``nsneg-train``) hold everything needed to continue exactly (the method's state:
weights, target network or queue; optimiser, epoch, step, generators, config) and, under a
name no method owns, ``backbone``: the evaluated network's weights with torchvision's ResNet
keys. ``load`` also reads the MoCo-only checkpoints of earlier nsneg (format ``nsneg-moco``),
upgraded in memory; ``load_backbone`` also reads the paper's released MoCo checkpoints
(``state_dict`` with ``module.encoder_q.*`` keys in a ``.pth.tar``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from nsneg.datasets_manifest.format.files import atomic_path
from nsneg.trainer.methods.base import build_trunk

FORMAT = "nsneg-train"
VERSION = 2
#: Earlier nsneg's checkpoints: MoCo only, the backbone inside the model's ``encoder_q.*``.
MOCO_FORMAT, MOCO_VERSION = "nsneg-moco", 1


def save(path: Path, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)


def _moco_encoder_q(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``[module.]encoder_q.*`` weights without the prefix nor the MLP head (``fc.*``)."""
    prefixes = ("module.encoder_q.", "encoder_q.")
    return {
        k.split("encoder_q.", 1)[1]: v
        for k, v in weights.items()
        if k.startswith(prefixes) and not k.split("encoder_q.", 1)[1].startswith("fc.")
    }


def _read(path: Path):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    return torch.load(path, map_location="cpu", weights_only=True)


def _upgrade(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """An nsneg checkpoint of this or an earlier format, as this format; anything else: ValueError."""
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, MOCO_FORMAT):
        raise ValueError(f"{path} is not an nsneg training checkpoint (expected format {FORMAT!r})")
    if state["format"] == MOCO_FORMAT:
        if state.get("version") != MOCO_VERSION:
            raise ValueError(
                f"{path}: {MOCO_FORMAT} checkpoint version {state.get('version')}, this nsneg "
                f"reads {MOCO_VERSION}"
            )
        return {
            **state,
            "format": FORMAT,
            "version": VERSION,
            "method": "moco",
            "backbone": _moco_encoder_q(state["model"]),
            "config": {"method": "moco", **state.get("config", {})},
        }
    if state.get("version") != VERSION:
        raise ValueError(
            f"{path}: checkpoint version {state.get('version')}, this nsneg reads {VERSION}"
        )
    method = state.get("method") or state.get("config", {}).get("method", "moco")
    if "backbone" not in state and method == "moco" and "model" in state:
        state = {**state, "backbone": _moco_encoder_q(state["model"])}  # a MoCo state written alone
    return {**state, "method": method}


def load(path: Path) -> dict[str, Any]:
    """An nsneg checkpoint (an earlier MoCo one upgraded); anything else is a clear error."""
    return _upgrade(path, _read(path))


def backbone_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The evaluated backbone's weights (torchvision ResNet keys, no head) and the run's config,
    from our checkpoints of any method, earlier nsneg's or the paper's released ones."""
    state = _read(path)
    if isinstance(state, dict) and "state_dict" in state and "format" not in state:
        weights, config = (
            _moco_encoder_q(state["state_dict"]),
            {"arch": state.get("arch", "resnet50")},
        )
        if not weights:
            raise ValueError(
                f"{path}: no 'encoder_q.*' weights inside (keys look like {list(state['state_dict'])[:3]})"
            )
        return weights, config
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, MOCO_FORMAT):
        raise ValueError(
            f"{path}: expected an nsneg checkpoint or a MoCo checkpoint with a 'state_dict' of "
            "'module.encoder_q.*' keys"
        )
    state = _upgrade(path, state)
    if not state.get("backbone"):
        raise ValueError(f"{path}: no backbone weights inside")
    return state["backbone"], state.get("config", {})


def load_backbone(path: Path, arch: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Frozen-ready backbone (no head, pooled features out) of a checkpoint, in eval mode."""
    weights, config = backbone_state(path)
    arch = arch or config.get("arch", "resnet50")
    encoder, _ = build_trunk(arch, small_images=config.get("small_images", False))
    try:
        encoder.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit a {arch} backbone: {str(e)[:300]}") from None
    return encoder.eval(), config
