"""The protocols, fixed in code before their rows are read: world, budget, rows, seeds.

Nothing here is chosen on a non-semantic (NS) row's numbers. The views per run are the
search's (``--stage search``, ``mini_repro.search``): the smallest of ``Protocol.search_views``
at which the MoCo baseline's paired 95 % interval against its untrained network excludes zero
on shape bias or cue-conflict accuracy, read on the baseline and the untrained network only;
the budget tool (``mini_repro.budget``) bounds which budgets are searched. The negatives'
settings are the paper's (alpha 2 and 3; patch sizes 16-72 px of a 224 px view, scaled to the
view size by ``nsneg.trainer.negatives``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from mini_repro.world import CLASSES, OOD_SPLITS, TRAIN_FAMILIES, UNSEEN_FAMILIES, World
from nsneg.pipeline import synthesis as synthesis_engine
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


UNTRAINED_ROW = "no pre-training"
#: The paper's MoCo rows: MoCo v2; + texture (alpha 2); + patch (alpha 2 and 3); texture + patch
#: (alpha 2, "ours"); then the untrained reference (paired against MoCo: what pre-training adds).
VARIANTS = (
    Variant(BASELINE, "none", 1.0, compared_to=None),
    Variant("texture a=2", "texture", 2.0),
    Variant("patch a=2", "patch", 2.0),
    Variant("patch a=3", "patch", 3.0),
    Variant("texture+patch a=2", "texture+patch", 2.0),
    Variant(UNTRAINED_ROW, UNTRAINED, 0.0),
)
#: The BYOL rows (their own protocol, ``byol``): BYOL and BYOL with each kind of negative (paired
#: against BYOL), the untrained reference (paired against BYOL).
BYOL_VARIANTS = (
    Variant("byol", "none", 1.0, method="byol", compared_to=None),
    Variant("byol+texture a=2", "texture", 2.0, method="byol", compared_to="byol"),
    Variant("byol+patch a=2", "patch", 2.0, method="byol", compared_to="byol"),
    Variant(UNTRAINED_ROW, UNTRAINED, 0.0, compared_to="byol"),
)


#: Every row of both: the ``gpu`` and ``quick`` protocols run them together (BYOL is the reference
#: of its NS rows there; the untrained row is compared with MoCo).
ALL_VARIANTS = VARIANTS[:-1] + BYOL_VARIANTS[:-1] + VARIANTS[-1:]


@dataclass(frozen=True)
class Protocol:
    name: str
    world: World
    per_class: dict[str, int]  # images per class and split
    synthesis_steps: tuple[int, ...]  # one per stage of synthesis_sizes
    arch: str
    image_size: int
    batch_size: int
    moco_k: int
    epochs: int
    steps_per_epoch: int
    seeds: tuple[int, ...]
    variants: tuple[Variant, ...] = VARIANTS
    #: the row whose learning the sanity readings and the search read (against the untrained row)
    baseline: str = BASELINE
    synthesis_sizes: tuple[int, ...] = (56, 112, 224)
    #: the pretrain split's images are stored at this side (px, >= the pipeline's 96 px crop)
    #: before the textures and shards are made: the views are 32 px, and every view decodes and
    #: crops its image; None: as rendered
    pretrain_side: int | None = None
    bn_splits: int = 8
    lr: float | None = None  # None: the trainer's default for the method
    small_images: bool | None = None  # the 3x3 stem without max-pool; None: image_size <= 48
    synthesis_batch: int = 16
    #: pretrain textures also made with the engine's default schedule, for the noise-ratio
    #: comparison in the report (~4 s each on 2 cores)
    default_schedule_images: int = 8
    workers: int = 1
    shuffle_buffer: int = 1000
    probe_epochs: int = 100
    data_seed: int = 0
    #: The learning curve: views (each a whole number of epochs) at which the runs of
    #: ``curve_rows`` x ``curve_seeds`` keep their checkpoint, each probed after the run
    curve_views: tuple[int, ...] = ()
    curve_rows: tuple[str, ...] = ()
    curve_seeds: tuple[int, ...] = ()
    #: ``--stage search``: the baseline's budgets (views, whole epochs) searched, over ``seeds``
    search_views: tuple[int, ...] = ()
    #: where it is meant to run, as the report states it
    budget: str = ""
    #: the wall-time budget on the AMD EPYC reference (2 cores) the budget tool checks; None: none
    budget_min: float | None = None

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"row names must be unique, got {names}")
        for v in self.variants:
            if v.compared_to is not None and v.compared_to not in names:
                raise ValueError(f"row {v.name!r} is compared to {v.compared_to!r}, not a row")
        if self.baseline not in names:
            raise ValueError(f"the baseline {self.baseline!r} is not a row")
        if self.per_class.get(HELDOUT, 0) < 2:
            raise ValueError(f"per_class[{HELDOUT!r}] must be >= 2 (the shortcut controls)")
        if len(self.synthesis_sizes) != len(self.synthesis_steps):
            raise ValueError("synthesis_sizes and synthesis_steps need one value per stage each")
        for views in self.curve_views + self.search_views:
            if views <= 0 or views % self.views_per_epoch:
                raise ValueError(
                    f"{views} views is not a whole number of epochs of {self.views_per_epoch}"
                )
        if any(v > self.views_per_run for v in self.curve_views):
            raise ValueError(f"curve_views {self.curve_views} exceed {self.views_per_run} views")
        unknown = sorted(set(self.curve_rows) - set(names))
        if unknown or not set(self.curve_seeds) <= set(self.seeds):
            raise ValueError(f"curve rows {unknown} or seeds {self.curve_seeds} not the protocol's")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"], d["train_families"], d["unseen_families"] = (
            list(CLASSES),
            list(TRAIN_FAMILIES),
            list(UNSEEN_FAMILIES),
        )
        d["patch_size_range"] = list(PATCH_SIZE_RANGE)
        d["generator"] = synthesis_engine.GENERATOR_VERSION  # textures of another engine differ
        return d

    @property
    def synthesis(self) -> SynthesisConfig:
        return SynthesisConfig(
            sizes=self.synthesis_sizes, steps=self.synthesis_steps, batch_size=self.synthesis_batch
        )

    @property
    def uses_small_images(self) -> bool:
        return self.image_size <= 48 if self.small_images is None else self.small_images

    @property
    def views_per_epoch(self) -> int:
        return self.steps_per_epoch * self.batch_size

    @property
    def views_per_run(self) -> int:
        return self.epochs * self.views_per_epoch

    def with_views(self, views: int) -> Protocol:
        """The same protocol trained for ``views`` (a whole number of epochs), no curve, no search."""
        return replace(
            self,
            epochs=views // self.views_per_epoch,
            curve_views=(),
            curve_rows=(),
            curve_seeds=(),
            search_views=(),
        )

    def row(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def describe(self) -> str:
        w, p = self.world, self.per_class
        methods = sorted({v.method for v in self.variants if v.kind != UNTRAINED})
        curve = (
            f"\nLearning curve: rows {', '.join(self.curve_rows)}, seeds {self.curve_seeds}, each "
            f"run's checkpoint kept and probed after {', '.join(map(str, self.curve_views))} views "
            "(the same run, its cosine schedule over the whole run)."
            if self.curve_views
            else ""
        )
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
            + f". Images per class: {p}; data seed {self.data_seed}"
            + (f"; pretrain images stored at {self.pretrain_side} px" if self.pretrain_side else "")
            + ".\n"
            f"Textures of the pretrain and {HELDOUT} splits by the real Ray job, steps "
            f"{self.synthesis_steps} at {self.synthesis_sizes} px (random encoder).\n"
            f"Pre-training ({', '.join(methods)}): {self.arch} at {self.image_size} px, batch "
            f"{self.batch_size}, K {self.moco_k}, shuffle-BN over {self.bn_splits} sub-batches, "
            f"{self.epochs} epochs x {self.steps_per_epoch} steps = {self.views_per_run} views per run, "
            f"{'the trainer default lr' if self.lr is None else f'lr {self.lr}'}, cosine; "
            f"{'3x3 stem without max-pool' if self.uses_small_images else 'the ImageNet stem'}; patch "
            f"negatives {PATCH_SIZE_RANGE[0]}-{PATCH_SIZE_RANGE[1]} px of 224 (the paper's), scaled to "
            f"the view; rows {', '.join(v.name for v in self.variants)}; seeds {self.seeds}."
            f"{curve}\n"
            f"Probe: linear, {self.probe_epochs} epochs on centre-crop features of `train` (labelled, same "
            f"distribution as `pretrain`, other images); read on test and the out-of-domain sets.\n"
            f"Representation reading and shortcut controls: the {p[HELDOUT] * len(CLASSES)} `{HELDOUT}` "
            f"images (same distribution, in no other split), their synthesised textures, patch-shuffled "
            f"views and seam-blended patch-shuffled views; controls fit on classes "
            f"{', '.join(CLASSES[: len(CLASSES) // 2])} and read on {', '.join(CLASSES[len(CLASSES) // 2 :])}."
        )


#: The world of docs/mini-repro/previous-2026-12-01/gate-search.json row 16: a flat grey background.
WORLD = World(
    shape_radius=(0.30, 0.42),
    texture_contrast=0.5,
    outline_width=5,
    background_colour=(0.5, 0.5, 0.5),
)

#: The texture schedule of the CPU protocols: the views are 32 px, so most of the default
#: schedule's work (its 112 and 224 px stages, 15/16 of the pixels) is spent on detail a view
#: never shows. Noise ratio against the default's: measured by every prepare, in the report.
CPU_SYNTHESIS = {"synthesis_sizes": (56, 224), "synthesis_steps": (80, 2)}

#: `make mini-repro`: the MoCo rows x 5 seeds on 2 CPU cores in <= 90 min (``mini_repro.budget``).
FULL = Protocol(
    name="full",
    world=WORLD,
    per_class={
        "pretrain": 250,
        "train": 100,
        "test": 50,
        "sketch": 50,
        "unseen_textures": 50,
        "cue_conflict": 50,
        HELDOUT: 6,
    },
    **CPU_SYNTHESIS,
    pretrain_side=96,
    arch="resnet18",
    image_size=32,
    batch_size=64,
    moco_k=1024,
    steps_per_epoch=10,  # 640 views per epoch: the curve's unit
    # 2,560 views per run: the search's pick (docs/mini-repro/gate-search.json: the smallest
    # searched budget at which moco - untrained excludes zero on shape bias or cue conflict)
    epochs=4,
    seeds=(0, 1, 2, 3, 4),
    bn_splits=2,  # previous-2026-12-01/gate-search.json row 5: 8 sub-batches of 4 never learned
    small_images=False,  # the ImageNet stem: the 3x3 stem ran at 31 views/s, this one at ~250
    curve_views=(640, 1280, 1920, 2560),
    curve_rows=(BASELINE, "patch a=2", "texture a=2"),
    curve_seeds=(0, 1),
    search_views=(2560, 5120, 10240, 19200),
    budget="2 CPU cores, <= 90 min",
    budget_min=90.0,
)

#: `--protocol byol`: the BYOL rows on the full protocol's world and per-step settings (their
#: step costs about 1.6x MoCo's), 5 seeds in their own 90 min (``mini_repro.budget``).
BYOL = replace(
    FULL,
    name="byol",
    variants=BYOL_VARIANTS,
    baseline="byol",
    curve_views=(),
    curve_rows=(),
    curve_seeds=(),
    search_views=(),
)

#: `--protocol long`: the full protocol with 4x the views per run (10,240), on a CPU machine with
#: the time for it (not bound to 90 min): whether an effect grows with training.
LONG = replace(
    FULL,
    name="long",
    epochs=4 * FULL.epochs,
    curve_views=(640, 1280, 2560, 5120, 10240),
    search_views=(),
    budget="2 CPU cores, about 4x the full protocol's training",
    budget_min=None,
)

#: `--protocol gpu --device cuda`: the same world and every row (MoCo and BYOL), 16x the full
#: protocol's views per run, on one GPU (no Ray there), after `--stage prepare` made the world
#: and textures on a CPU machine.
GPU = replace(
    FULL,
    name="gpu",
    variants=ALL_VARIANTS,
    epochs=16 * FULL.epochs,  # 40,960 views per run
    curve_views=(640, 2560, 10240, 20480, 40960),
    search_views=(),
    workers=8,
    budget="1 GPU",
    budget_min=None,
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
    variants=ALL_VARIANTS,
    synthesis_sizes=(56, 224),
    synthesis_steps=(2, 1),
    pretrain_side=96,
    arch="resnet18",
    image_size=32,
    batch_size=8,
    moco_k=16,
    epochs=2,
    steps_per_epoch=1,
    seeds=(0, 1),
    curve_views=(8, 16),
    curve_rows=(BASELINE, "patch a=2"),
    curve_seeds=(0,),
    search_views=(8, 16),
    default_schedule_images=1,
    workers=0,  # no loader process to start: most of a 1-step run would be its start-up
    shuffle_buffer=16,
    probe_epochs=10,
    budget="plumbing only",
)

PROTOCOLS = {p.name: p for p in (FULL, BYOL, LONG, GPU, QUICK)}
