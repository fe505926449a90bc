"""The protocol, fixed in code before the full run: world, budget, variants, seeds, gate.

Nothing here was tuned on the out-of-domain sets: the world and the budget were chosen on
the MoCo baseline's in-domain accuracy (probe fit on ``train``, read on ``test``) alone,
a search recorded in ``GATE_SEARCH`` and printed with every result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from mini_repro.world import CLASSES, OOD_SPLITS, TRAIN_FAMILIES, UNSEEN_FAMILIES, World
from nsneg.pipeline.synthesis import SynthesisConfig

#: Sets read after pre-training, and the measures reported per run.
EVAL_SETS = ("test",) + OOD_SPLITS
MEASURES = EVAL_SETS + ("shape_bias",)
BASELINE = "moco"

#: The sanity gate, checked on the baseline before any other variant is trained: it must
#: learn shape in domain, and transfer to shape alone (outlines) clearly above chance.
GATE_MIN_IN_DOMAIN = 80.0  # mean top-1 % on test
GATE_MAX_SKETCH_P = 0.01  # every seed: one-sided binomial test of sketch top-1 against chance


def chance() -> float:
    return 100.0 / len(CLASSES)


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # the trainer's negatives_kind
    alpha: float


#: Not pre-trained at all: the same network at its seed's initial weights. A reference row that
#: says how much of any number is the architecture's and the probe's rather than pre-training's.
UNTRAINED = "untrained"

#: The paper's rows: MoCo v2; + texture (alpha 2); + patch (alpha 2 and 3); texture + patch
#: (alpha 2, "ours"); then the untrained reference.
VARIANTS = (
    Variant(BASELINE, "none", 1.0),
    Variant("texture a=2", "texture", 2.0),
    Variant("patch a=2", "patch", 2.0),
    Variant("patch a=3", "patch", 3.0),
    Variant("texture+patch a=2", "texture+patch", 2.0),
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
    enforce_gate: bool = True  # stop after the baseline when the gate fails
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"], d["train_families"], d["unseen_families"] = (
            list(CLASSES),
            list(TRAIN_FAMILIES),
            list(UNSEEN_FAMILIES),
        )
        return d

    @property
    def uses_small_images(self) -> bool:
        return self.image_size <= 48 if self.small_images is None else self.small_images

    @property
    def views_per_run(self) -> int:
        return self.epochs * self.steps_per_epoch * self.batch_size

    def describe(self) -> str:
        w, p = self.world, self.per_class
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
            f"Textures of the pretrain split by the real Ray job, steps {self.synthesis_steps} at (56, 112, 224) px "
            f"(random encoder).\n"
            f"Pre-training: MoCo v2 {self.arch} at {self.image_size} px, batch {self.batch_size}, K {self.moco_k}, "
            f"shuffle-BN over {self.bn_splits} sub-batches, {self.epochs} epochs x {self.steps_per_epoch} steps = "
            f"{self.views_per_run} views per run, "
            f"{'lr 0.8 x batch / 512 (the trainer default)' if self.lr is None else f'lr {self.lr}'}, cosine; "
            f"{'3x3 stem without max-pool' if self.uses_small_images else 'the ImageNet stem'}; "
            f"variants {', '.join(v.name for v in self.variants)}; seeds {self.seeds}.\n"
            f"Probe: linear, {self.probe_epochs} epochs on centre-crop features of `train` (labelled, same "
            f"distribution as `pretrain`, other images); read on test and the out-of-domain sets.\n"
            f"Gate: baseline mean in-domain top-1 >= {GATE_MIN_IN_DOMAIN:.0f} % and, for every seed, sketch "
            f"top-1 above chance by a one-sided binomial test at p < {GATE_MAX_SKETCH_P}."
        )


#: The world the search settled on (GATE_SEARCH row 16: a flat grey background); the previous
#: ones are ``World()``'s defaults (row 1) and row 3's (textured background).
WORLD = World(
    shape_radius=(0.30, 0.42),
    texture_contrast=0.5,
    outline_width=5,
    background_colour=(0.5, 0.5, 0.5),
)

#: `make mini-repro`: 2 CPU cores, <= 45 min (aimed at <= 35).
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
    },
    synthesis_steps=SynthesisConfig().steps,  # the engine's default schedule
    arch="resnet18",
    image_size=64,
    batch_size=32,
    moco_k=64,
    epochs=4,
    steps_per_epoch=75,
    seeds=(0, 1, 2),
    bn_splits=2,  # GATE_SEARCH row 5: with 8 sub-batches of 4 the loss never left chance
)

#: `--protocol gpu --device cuda`: pre-training and probes on one H100 in <= 8 min (no Ray there),
#: after `--stage prepare` made the world and textures on a CPU machine (the same world and
#: pretrain images as FULL: a ~40 MB folder). Same per-run settings as FULL but 10x the views
#: per run (GATE_SEARCH row 15: accuracy still rose with views far past FULL's 9,600), with the
#: 3 seeds the issue asks for at least. Not measured (no GPU in the sessions that wrote it):
#: 15 trained runs x 96,000 views = 1.44M views, in 8 min if loader and GPU sustain ~3,000
#: views/s together; the gate, checked after the baseline's 3 runs, says first whether it pays.
GPU = replace(FULL, name="gpu", epochs=10 * FULL.epochs, workers=8)

#: `--quick`: the test suite's smoke test; checks that everything runs, not what it finds.
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
    },
    synthesis_steps=(2, 1, 1),
    arch="resnet18",
    image_size=32,
    batch_size=8,
    moco_k=16,
    epochs=1,
    steps_per_epoch=2,
    seeds=(0,),
    workers=0,  # no loader process to start: most of a 2-step run would be its start-up
    shuffle_buffer=16,
    probe_epochs=10,
    enforce_gate=False,
)

PROTOCOLS = {p.name: p for p in (FULL, GPU, QUICK)}

#: The search for a world and budget in which the baseline passes the gate, in order. Each
#: row: what changed, the baseline's in-domain top-1 % (probe on `train`, read on `test`;
#: nothing else read) as text (``test``) and as a number (``top1``), the same world's untrained
#: network read the same way where measured (``untrained``), a label for the plot (``short``)
#: and what it says. Seed 0 unless noted. Rows 7-14 (2026-11-27) ran with one torch thread
#: beside another job on the 2-core machine; views/s there are not comparable to a quiet run.
GATE_SEARCH: tuple[dict[str, Any], ...] = (
    {
        "change": "previous protocol (2026-11-25): World() defaults (circumradius 0.22-0.36, full-contrast "
        "textures), 60 images/class pre-trained on and probed on, K 512, 4 x 40 x 32 = 5,120 views",
        "test": "48.3 ± 2.6 (3 seeds)",
        "top1": 48.3,
        "short": "previous protocol (3 seeds)",
        "note": "the probe fits 99 % of its 480 images: over-fit; sketch 12.0 %, at chance",
    },
    {
        "change": "same world, no pre-training at all; probe on a separate labelled split of 100/class",
        "test": "55.5",
        "untrained": 55.5,
        "short": "previous world, untrained, own probe split",
        "note": "untrained features beat the old pre-trained ones: the old probe had too little data, and its "
        "pre-training (5,120 views, K 512 > 480 images: the queue held keys of the query's own image) "
        "added nothing the probe could use",
    },
    {
        "change": "world: shapes larger (circumradius 0.30-0.42: a 20 % crop still holds some shape at 64 px), "
        "texture contrast 0.5 (textures compete less with the shape's boundary); still untrained",
        "test": "71.0",
        "untrained": 71.0,
        "short": "larger shapes, contrast 0.5, untrained",
        "note": "shape now readable by a random ResNet-18 + linear probe",
    },
    {
        "change": "MoCo baseline on that world: 12 pre-training images/class (96, K 64 < 96), "
        "4 x 75 x 32 = 9,600 views (~100 passes), probe 100/class",
        "test": "62.0",
        "top1": 62.0,
        "untrained": 71.0,
        "short": "MoCo, 96 images, K 64, 9.6k views",
        "note": "gate FAILED in domain (sketch not read). Loss stayed at 4.09, about ln 65 = 4.17 (chance "
        "among 1 positive + 64 queue keys), and the positive's top-1 rate fell from 0.26 to 0.08 over "
        "the 4 epochs: the instance task was not learned, and the features ended below untrained ones "
        "(row 3). Took 44 min at 3-4 views/s on the shared 2-core machine (load 6-30). Suspects, "
        "budget only: shuffle-BN over 8 sub-batches of 4 (bn_splits 8 at batch 32; row 5), too few "
        "views (row 6), lr 0.05 with m 0.99 over 300 steps, K 64",
    },
    {
        "change": "budget: shuffle-BN over 2 sub-batches of 16 (bn_splits 2) instead of 8 of 4; else as row 4",
        "test": "69.2",
        "top1": 69.2,
        "untrained": 71.0,
        "short": "+ bn_splits 2 (FULL's budget since)",
        "note": "gate FAILED in domain. The loss now falls (4.02 -> 3.70 over 4 epochs): the instance task "
        "starts to be learned, but the features are still no better than untrained (71.0). 304 s "
        "(49-72 views/s) once the machine had gone quiet at the end of the session",
    },
    {
        "change": "budget: row 5 trained twice as long (8 x 75 x 32 = 19,200 views)",
        "test": "71.5",
        "top1": 71.5,
        "untrained": 71.0,
        "short": "+ 2x views (19.2k)",
        "note": "gate FAILED in domain. Loss 4.02 -> 3.62, still far from learned; in domain equal to "
        "untrained (71.0): twice the views bought nothing the probe can use. 260 s at 74 views/s. "
        "The 2026-11-26 session ended here",
    },
    {
        "change": "budget: row 5 with lr 0.0125 (a quarter of the trainer's default 0.8 x 32 / 512 = 0.05)",
        "test": "67.8",
        "top1": 67.75,
        "untrained": 70.75,
        "short": "row 5, lr 0.0125",
        "note": "gate FAILED. The loss falls further (3.40 at the end, row 5: 3.70) but the features do not "
        "improve; the untrained network, re-read in this session, 70.75",
    },
    {
        "change": "budget: row 5 with lr 0.2",
        "test": "65.0",
        "top1": 65.0,
        "untrained": 70.75,
        "short": "row 5, lr 0.2",
        "note": "gate FAILED; the loss stayed at chance (4.17) for all 300 steps: too high",
    },
    {
        "change": "probe only (no new pre-training): 200 or 400 labelled images/class instead of 100, weight "
        "decay 0, 1e-3 or 1e-2, on row 7's checkpoint and on the untrained network",
        "test": "73.8 (best of 9 settings)",
        "top1": 73.75,
        "untrained": 75.0,
        "short": "probe: 400/class, weight decay 1e-2 (row 7 net)",
        "note": "gate FAILED. More labels and regularisation lift both by 2-4 points, the untrained more: "
        "the probe is not what holds the baseline back. Kept at 100/class, no weight decay",
    },
    {
        "change": "budget: 48 pre-training images/class (384) instead of 12, else row 5. The loader resamples "
        "shards through a 1000-sample shuffle buffer, so with 96 images about half of the queries "
        "(1 - (95/96)^64) find a key of their own image among the 64 negatives; with 384, 15 %",
        "test": "64.2",
        "top1": 64.25,
        "untrained": 70.75,
        "short": "384 pre-training images, K 64",
        "note": "gate FAILED; loss 3.90 at the end: with 4x the images and the same 9,600 views each image "
        "is seen 4x less often",
    },
    {
        "change": "budget: 24 pre-training images/class (192) and K 32 (own-image keys among the negatives "
        "about 15 %), else row 5",
        "test": "68.8",
        "top1": 68.75,
        "untrained": 70.75,
        "short": "192 images, K 32",
        "note": "gate FAILED; the loss falls furthest so far (2.97 against chance ln 33 = 3.50), the "
        "features do not improve",
    },
    {
        "change": "world: a flat background (background_contrast 0: the background keeps its mean colour, "
        "loses its pattern; same draws otherwise), so the shape's outline is the only edge between "
        "regions; budget of row 5",
        "test": "73.8",
        "top1": 73.75,
        "untrained": 74.75,
        "short": "flat background (world), row 5 budget",
        "note": "gate FAILED; both rise by ~4 points, MoCo still 1 point below untrained",
    },
    {
        "change": "budget: 32 px views (ResNet-18 with its ImageNet stem: ~4x less compute per view), batch "
        "64, K 64, lr 0.025, 48 images/class, flat background, 4 x 150 x 64 = 38,400 views (4x row 5)",
        "test": "69.0",
        "top1": 69.0,
        "untrained": 74.0,
        "short": "32 px, 384 images, flat bg, 38.4k views",
        "note": "gate FAILED; loss 3.09 of chance 4.17, the instance task is being learned, the features "
        "are 5 points below untrained (74.0 at 32 px). 110 views/s",
    },
    {
        "change": "diagnostic, no new training: row 12's checkpoint and the untrained network probed on "
        "grey-level copies of train and test (same world, same probe)",
        "test": "62.8 (colour: 73.8)",
        "top1": 62.75,
        "untrained": 69.75,
        "short": "row 12 nets probed on grey-level images",
        "note": "without colour MoCo loses 11 points, the untrained network 5: pre-training taught colour "
        "(the easiest cue that tells one image from another here, colour jitter notwithstanding), "
        "not shape",
    },
    {
        "change": "budget: row 13 trained 3x as long (12 x 150 x 64 = 115,200 views, 300 passes over the "
        "384 images); checkpoints probed along the way",
        "test": "74.2 (19k: 64.2, 38k: 68.0, 58k: 71.5, 77k: 72.2, 96k: 74.5 views)",
        "top1": 74.25,
        "untrained": 74.0,
        "short": "row 13 x 3 views (115k)",
        "note": "gate FAILED. The loss falls to 2.37 (chance 4.17) and accuracy climbs with the views, but "
        "only up to the untrained network's (74.0): a CPU budget of ~10k views per run is an order "
        "of magnitude short on this world. 1,055 s at 109 views/s beside other jobs",
    },
    {
        "change": "world: every background one flat mid-grey (background_colour 0.5, 0.5, 0.5; same draws "
        "otherwise), so the background tells no image from another and colour tells only the "
        "shape's texture; budget of row 5 (FULL's: 64 px, 96 images, K 64, 9,600 views)",
        "test": "84.8",
        "top1": 84.75,
        "untrained": 82.25,
        "short": "grey background (world), row 5 budget: FULL",
        "note": "in-domain part of the gate PASSED on seed 0 (sketch not read: the gate reads it in the "
        "full run). The untrained network reads 82.25 on this world, so most of the in-domain "
        "accuracy is the architecture's and the probe's; MoCo adds 2.5 points. Adopted as FULL",
    },
)
