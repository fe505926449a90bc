"""One run of the mini reproduction: pre-training with the real trainer, then its probes.

``pretrain`` trains one row and seed with ``nsneg.trainer.train.Trainer`` on the prepared
shards (continuing its own checkpoint) and keeps the backbone at the learning curve's budgets;
``probe`` reads a backbone with a linear probe on frozen features of ``train`` (shape labels),
on test and the three out-of-domain sets, with shape bias on cue conflict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mini_repro import world
from mini_repro.protocol import EVAL_SETS, PATCH_SIZE_RANGE, UNTRAINED, Protocol, Variant
from nsneg.trainer import checkpoint as checkpoints
from nsneg.trainer.config import TrainConfig
from nsneg.trainer.eval.features import align_classes, extract_features, load_dataset
from nsneg.trainer.eval.probes import top1, train_linear
from nsneg.trainer.train import Trainer

CURVE = "curve"


def run_name(variant: Variant, seed: int) -> str:
    return f"{variant.name.replace(' ', '_').replace('=', '').replace('+', '-')}-seed{seed}"


def curve_checkpoint(run_dir: Path, views: int) -> Path:
    """Where a run keeps its backbone after ``views`` views."""
    return Path(run_dir) / CURVE / f"views-{views:07d}.pt"


def train_config(
    shards: Path, run_dir: Path, variant: Variant, seed: int, protocol: Protocol
) -> TrainConfig:
    """The trainer's settings for one row and seed (the untrained row: MoCo's, never fitted)."""
    p = protocol
    return TrainConfig(
        negatives=str(shards),
        out=str(run_dir),
        negatives_kind="none" if variant.kind == UNTRAINED else variant.kind,
        alpha=variant.alpha,
        patch_size_range=PATCH_SIZE_RANGE,
        arch=p.arch,
        image_size=p.image_size,
        small_images=p.uses_small_images,
        lr=p.lr,
        batch_size=p.batch_size,
        method_settings=dict(k=p.moco_k) if variant.method == "moco" else None,
        epochs=p.epochs,
        steps_per_epoch=p.steps_per_epoch,
        bn_splits=p.bn_splits,
        workers=p.workers,
        seed=seed,
        shuffle_buffer=p.shuffle_buffer,
        method=variant.method,
        checkpoint_every=1,  # every epoch's end: the curve's copies are made there
    )


def _keep_backbones_at(trainer: Trainer, views: tuple[int, ...]) -> None:
    """After each checkpoint written at an epoch's end that ends at one of ``views``, its backbone
    (and config) alone into ``curve_checkpoint`` (read back with ``checkpoints.load_backbone``)."""
    save = trainer.save
    batch = trainer.config.batch_size

    def save_and_keep(epoch_complete: bool) -> None:
        save(epoch_complete)
        seen = trainer.step * batch
        if epoch_complete and seen in views:
            state = checkpoints.load(trainer.checkpoint_path)
            checkpoints.save(
                curve_checkpoint(trainer.out, seen),
                {
                    "method": state["method"],
                    "backbone": state["backbone"],
                    "config": state["config"],
                    "views": seen,
                },
            )

    trainer.save = save_and_keep


def pretrain(
    shards: Path,
    run_dir: Path,
    variant: Variant,
    seed: int,
    protocol: Protocol,
    device: str,
    show_progress: bool,
    curve_views: tuple[int, ...] = (),
) -> Path:
    """One pre-training run with the real trainer (continues its own checkpoint); returns the
    final checkpoint. With ``curve_views``, the backbone is also kept after each of those views
    (a finished run without them is trained again)."""
    p = protocol
    trainer = Trainer(
        train_config(shards, run_dir, variant, seed, p), device=device, show_progress=show_progress
    )
    if variant.kind == UNTRAINED:  # the seed's initial weights, saved as they are
        trainer.out.mkdir(parents=True, exist_ok=True)
        trainer.save(epoch_complete=False)
        return trainer.checkpoint_path
    missing = [v for v in curve_views if not curve_checkpoint(run_dir, v).exists()]
    if trainer.checkpoint_path.exists():
        state = checkpoints.load(trainer.checkpoint_path)
        same = state["config"]["epochs"] == p.epochs
        # a curve point already passed but not kept: only a fresh run can keep it
        passed = any(v <= state["step"] * p.batch_size for v in missing)
        if same and not passed:
            trainer.restore(trainer.checkpoint_path)
    if curve_views:
        _keep_backbones_at(trainer, curve_views)
    if trainer.epoch < p.epochs:
        trainer.fit()
    return trainer.checkpoint_path


def shape_bias(
    predicted: torch.Tensor, shape_labels: torch.Tensor, texture_labels: torch.Tensor
) -> float | None:
    """Shape decisions / (shape + texture decisions) on cue conflict (Geirhos et al. 2019); None if neither."""
    shape = int((predicted == shape_labels).sum())
    texture = int((predicted == texture_labels).sum())
    return shape / (shape + texture) if shape + texture else None


def probe(
    backbone: torch.nn.Module, data: Path, protocol: Protocol, seed: int, device: str
) -> dict[str, Any]:
    """Linear probe on frozen features of ``train`` (shape labels); top-1 % on every set and shape bias."""
    from torch.utils.data import DataLoader

    def features(split: str):
        dataset, classes = load_dataset(data / split, split, protocol.image_size)
        loader = DataLoader(dataset, batch_size=256, shuffle=False, num_workers=0)
        x, y = extract_features(backbone, loader, device, desc=split)
        return x, y, classes, dataset

    x_train, y_train, train_classes, _ = features("train")
    head = train_linear(
        x_train, y_train, len(train_classes), epochs=protocol.probe_epochs, seed=seed
    )
    result: dict[str, Any] = {"top1": {"train": 100 * top1(head, x_train, y_train)}}
    for split in EVAL_SETS:
        x, y, classes, dataset = features(split)
        y = align_classes(train_classes, classes)[y]
        result["top1"][split] = 100 * top1(head, x, y)
        if split == "cue_conflict":
            with torch.no_grad():
                predicted = head(x.to(head.weight.device)).argmax(dim=1).cpu()
            index = {name: i for i, name in enumerate(train_classes)}
            textures = torch.tensor(
                [index[world.CLASSES[world.texture_class_of(path)]] for path, _ in dataset.samples]
            )
            result["shape_bias"] = shape_bias(predicted, y, textures)
    return result
