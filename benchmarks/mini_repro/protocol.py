"""The protocol, fixed in code before the full run: world, budget, rows, seeds, sanity readings.

Nothing here was chosen on an out-of-domain set or on a non-semantic row's numbers: the
world and the budget were chosen on the baseline's in-domain accuracy against the untrained
network's (``docs/mini-repro/gate-search.json``) and on the compute cost per view
(``docs/mini-repro/budget.json``, from ``mini_repro.budget``). The negatives' settings are
the paper's (alpha 2 and 3; patch sizes 16-72 px of a 224 px view, scaled to the view size
by ``nsneg.trainer.negatives``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from mini_repro.world import CLASSES, OOD_SPLITS, TRAIN_FAMILIES, UNSEEN_FAMILIES, World
from nsneg.pipeline.synthesis import SynthesisConfig
from nsneg.trainer.methods import METHODS

#: Sets a probe is read on after pre-training (the probe is fit on ``train``).
EVAL_SETS = ("test",) + OOD_SPLITS
#: Held out of pre-training and of the probes: the representation reading and the shortcut
#: controls, on these images and their own synthesised textures.
HELDOUT = "heldout"
#: Transfer readings: linear-probe top-1 % per set, and shape bias on cue conflict.
TRANSFER = EVAL_SETS + ("shape_bias",)
#: Representation readings on held-out images: the mean cosine similarity of each image's frozen
#: features to those of its positive view, its own texture, its patch-shuffled view and its
#: seam-blended patch-shuffled view, each minus its mean similarity to the other images
#: (0 = no closer than another image).
REPRESENTATION = ("positive_margin", "texture_margin", "shuffle_margin", "blended_shuffle_margin")
#: Shortcut controls: top-1 % of a linear probe on frozen features, fit on held-out images of
#: the first half of the classes and read on the other half (chance 50 %).
CONTROLS = ("shuffled_vs_intact", "blended_shuffled_vs_intact", "texture_vs_photo")
MEASURES = TRANSFER + REPRESENTATION + CONTROLS
BASELINE = "moco"
#: A sanity reading (a fact in the report, never a stop): sketch top-1 above chance on every
#: seed by a one-sided binomial test at this level.
SKETCH_P = 0.01
#: The paper's patch sizes, for 224 px views (scaled to the view by the trainer).
PATCH_SIZE_RANGE = (16, 72)


def chance() -> float:
    return 100.0 / len(CLASSES)


#: Not pre-trained at all: the same network at its seed's initial weights. A reference row that
#: says how much of any number is the architecture's and the probe's rather than pre-training's.
UNTRAINED = "untrained"


@dataclass(frozen=True)
class Variant:
    """One row: how it is pre-trained, and the row its paired differences are taken against."""

    name: str
    kind: str  # the trainer's negatives_kind, or UNTRAINED
    alpha: float
    method: str = "moco"  # the trainer's TrainConfig.method
    compared_to: str | None = BASELINE  # None: a reference row, no differences

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")


#: The paper's rows: MoCo v2; + texture (alpha 2); + patch (alpha 2 and 3); texture + patch
#: (alpha 2, "ours"); BYOL and BYOL with each kind of negative (paired against BYOL); then the
#: untrained reference (paired against MoCo: what pre-training adds).
VARIANTS = (
    Variant(BASELINE, "none", 1.0, compared_to=None),
    Variant("texture a=2", "texture", 2.0),
    Variant("patch a=2", "patch", 2.0),
    Variant("patch a=3", "patch", 3.0),
    Variant("texture+patch a=2", "texture+patch", 2.0),
    Variant("byol", "none", 1.0, method="byol"),
    Variant("byol+texture a=2", "texture", 2.0, method="byol", compared_to="byol"),
    Variant("byol+patch a=2", "patch", 2.0, method="byol", compared_to="byol"),
    Variant("no pre-training", UNTRAINED, 0.0),
)


@dataclass(frozen=True)
class Protocol:
    name: str
    world: World
    per_class: dict[str, int]  # images per class and split
    synthesis_steps: tuple[int, ...]  # at (56, 112, 224) px
    arch: str
    image_size: int
    batch_size: int
    moco_k: int
    epochs: int
    steps_per_epoch: int
    seeds: tuple[int, ...]
    variants: tuple[Variant, ...] = VARIANTS
    bn_splits: int = 8
    lr: float | None = None  # None: the trainer's default, 0.8 x batch / 512
    small_images: bool | None = None  # the 3x3 stem without max-pool; None: image_size <= 48
    synthesis_batch: int = 16
    workers: int = 1
    shuffle_buffer: int = 1000
    probe_epochs: int = 100
    data_seed: int = 0
    #: where it is meant to run, as the report states it
    budget: str = ""

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"row names must be unique, got {names}")
        for v in self.variants:
            if v.compared_to is not None and v.compared_to not in names:
                raise ValueError(f"row {v.name!r} is compared to {v.compared_to!r}, not a row")
        if self.per_class.get(HELDOUT, 0) < 2:
            raise ValueError(f"per_class[{HELDOUT!r}] must be >= 2 (the shortcut controls)")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"], d["train_families"], d["unseen_families"] = (
            list(CLASSES),
            list(TRAIN_FAMILIES),
            list(UNSEEN_FAMILIES),
        )
        d["patch_size_range"] = list(PATCH_SIZE_RANGE)
        return d

    @property
    def uses_small_images(self) -> bool:
        return self.image_size <= 48 if self.small_images is None else self.small_images

    @property
    def views_per_run(self) -> int:
        return self.epochs * self.steps_per_epoch * self.batch_size

    def describe(self) -> str:
        w, p = self.world, self.per_class
        methods = sorted({v.method for v in self.variants if v.kind != UNTRAINED})
        return (
            f"World: {len(CLASSES)} shape classes ({', '.join(CLASSES)}), {w.image_size} px, circumradius "
            f"{w.shape_radius[0]}-{w.shape_radius[1]} of the side, texture contrast {w.texture_contrast}, "
            f"typical class texture with probability {w.class_texture_probability} in domain; training "
            f"texture families {', '.join(TRAIN_FAMILIES)}, held out {', '.join(UNSEEN_FAMILIES)}; "
            f"sketch lines {w.outline_width} px; background "
            + (
                f"flat {w.background_colour}"
                if w.background_colour is not None
                else f"textured, contrast {w.background_pattern_contrast}"
            )
            + f". Images per class: {p}; data seed {self.data_seed}.\n"
            f"Textures of the pretrain and {HELDOUT} splits by the real Ray job, steps "
            f"{self.synthesis_steps} at (56, 112, 224) px (random encoder).\n"
            f"Pre-training ({', '.join(methods)}): {self.arch} at {self.image_size} px, batch "
            f"{self.batch_size}, K {self.moco_k}, shuffle-BN over {self.bn_splits} sub-batches, "
            f"{self.epochs} epochs x {self.steps_per_epoch} steps = {self.views_per_run} views per run, "
            f"{'lr 0.8 x batch / 512 (the trainer default)' if self.lr is None else f'lr {self.lr}'}, cosine; "
            f"{'3x3 stem without max-pool' if self.uses_small_images else 'the ImageNet stem'}; patch "
            f"negatives {PATCH_SIZE_RANGE[0]}-{PATCH_SIZE_RANGE[1]} px of 224 (the paper's), scaled to "
            f"the view; rows {', '.join(v.name for v in self.variants)}; seeds {self.seeds}.\n"
            f"Probe: linear, {self.probe_epochs} epochs on centre-crop features of `train` (labelled, same "
            f"distribution as `pretrain`, other images); read on test and the out-of-domain sets.\n"
            f"Representation reading and shortcut controls: the {p[HELDOUT] * len(CLASSES)} `{HELDOUT}` "
            f"images (same distribution, in no other split), their synthesised textures, patch-shuffled "
            f"views and seam-blended patch-shuffled views; controls fit on classes "
            f"{', '.join(CLASSES[: len(CLASSES) // 2])} and read on {', '.join(CLASSES[len(CLASSES) // 2 :])}."
        )


#: The world of gate-search.json row 16: a flat grey background.
WORLD = World(
    shape_radius=(0.30, 0.42),
    texture_contrast=0.5,
    outline_width=5,
    background_colour=(0.5, 0.5, 0.5),
)

#: `make mini-repro`: every row x 5 seeds on 2 CPU cores in <= 45 min (estimated in
#: docs/mini-repro/budget.json).
FULL = Protocol(
    name="full",
    world=WORLD,
    per_class={
        "pretrain": 12,
        "train": 100,
        "test": 50,
        "sketch": 50,
        "unseen_textures": 50,
        "cue_conflict": 50,
        HELDOUT: 6,
    },
    synthesis_steps=SynthesisConfig().steps,  # the engine's default schedule
    arch="resnet18",
    image_size=32,
    batch_size=32,
    moco_k=64,
    epochs=2,
    steps_per_epoch=15,
    seeds=(0, 1, 2, 3, 4),
    bn_splits=2,  # gate-search.json row 5: with 8 sub-batches of 4 the loss never left chance
    small_images=False,  # the ImageNet stem: a quarter of the 64 px cost per view
    budget="2 CPU cores, <= 45 min",
)

#: `--protocol gpu --device cuda`: the same world, rows and seeds, 20x the views per run (in
#: the same 2 epochs), on one GPU (no Ray there), after `--stage prepare` made the world and
#: textures on a CPU machine. Its wall time is not measured: 45 runs x 19,200 views.
GPU = replace(
    FULL,
    name="gpu",
    steps_per_epoch=20 * FULL.steps_per_epoch,
    workers=8,
    budget="1 GPU (wall time not measured)",
)

#: `--quick`: the test suite's smoke test; checks that every row kind runs, not what it finds.
QUICK = Protocol(
    name="quick",
    world=WORLD,
    per_class={
        "pretrain": 2,
        "train": 2,
        "test": 2,
        "sketch": 2,
        "unseen_textures": 2,
        "cue_conflict": 2,
        HELDOUT: 2,
    },
    synthesis_steps=(2, 1, 1),
    arch="resnet18",
    image_size=32,
    batch_size=8,
    moco_k=16,
    epochs=1,
    steps_per_epoch=1,
    seeds=(0, 1),
    workers=0,  # no loader process to start: most of a 1-step run would be its start-up
    shuffle_buffer=16,
    probe_epochs=10,
    budget="plumbing only",
)

PROTOCOLS = {p.name: p for p in (FULL, GPU, QUICK)}
