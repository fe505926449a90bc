"""A controlled miniature of the paper's experiment, end to end on CPU through the real code.

Question: does MoCo v2 trained against non-semantic negatives (textures, patch-shuffled
views) learn features that lean on shape rather than texture, and does that pay off out
of domain? Here the answer is measured on a procedural world where we know what shape and
texture are (``benchmarks/shapes.py``; texture is a class shortcut in training):

1. generate the ImageFolder trees (train, test, sketch, unseen_textures, cue_conflict);
2. make the train split's textures with the real Ray job (``pipeline.job.run``) into shards;
3. pre-train every variant with the real ``trainer.train.Trainer`` on those shards;
4. linear probe (``trainer.eval.probes.train_linear``) on frozen features of ``train``, shape
   labels; report top-1 on test and the three out-of-domain sets, mean +- std over seeds.

    python benchmarks/mini_repro.py [--out runs/mini-repro] [--quick]

The protocol is fixed in the constants below, chosen before any result was seen; no
setting is tuned on the out-of-domain sets (they are only ever evaluated).
"""
from __future__ import annotations

import io
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: benchmarks/ is not a package on its own
import shapes  # noqa: E402
from pipeline import contract, files  # noqa: E402

# --------------------------------------------------------------------------- the protocol (fixed in advance)


@dataclass(frozen=True)
class Protocol:
    data_seed: int
    per_class: dict[str, int]  # images per class in each split
    synthesis_steps: tuple[int, ...]  # at sizes (56, 112, 224): a fast schedule, not the default (120, 40, 14)
    synthesis_batch: int
    arch: str
    image_size: int
    batch_size: int
    moco_k: int
    epochs: int
    steps_per_epoch: int
    workers: int
    shuffle_buffer: int
    alphas: tuple[float, ...]
    seeds: tuple[int, ...]
    probe_epochs: int


#: The full run: 1 + 3 kinds x 3 alphas = 10 variants x 3 seeds = 30 pre-trainings. Timed on this
#: 2-core CPU (2026-11-25, a slice of this protocol): data 4 s, textures 160 s (3.0/s), one
#: pre-training 48 s (moco) to 60 s (texture+patch), one probe 2 s -> about 30 min in all.
FULL = Protocol(
    data_seed=0,
    per_class={"train": 60, "test": 25, "sketch": 25, "unseen_textures": 25, "cue_conflict": 25},
    synthesis_steps=(20, 8, 2),
    synthesis_batch=16,
    arch="resnet18",
    image_size=64,
    batch_size=32,
    moco_k=512,
    epochs=4,
    steps_per_epoch=40,  # 4 x 40 x 32 = 5120 views ~ 10.7 passes over the 480 train images
    workers=1,
    shuffle_buffer=500,
    alphas=(1.0, 2.0, 3.0),  # the paper uses 2 (texture, patch) and 3 (patch); 1 = a plain extra negative
    seeds=(0, 1, 2),
    probe_epochs=100,
)

QUICK = Protocol(
    data_seed=0,
    per_class={"train": 4, "test": 2, "sketch": 2, "unseen_textures": 2, "cue_conflict": 2},
    synthesis_steps=(2, 1, 1),
    synthesis_batch=16,
    arch="resnet18",
    image_size=32,
    batch_size=8,
    moco_k=64,
    epochs=1,
    steps_per_epoch=2,
    workers=0,  # no loader process to start: most of a 2-step run would be its start-up
    shuffle_buffer=16,
    alphas=(2.0,),
    seeds=(0,),
    probe_epochs=10,
)

EVAL_SETS = ("test",) + shapes.OOD_SPLITS


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # trainer negatives_kind
    alpha: float


def variants(protocol: Protocol) -> list[Variant]:
    """The MoCo v2 baseline, then each kind of non-semantic negative at each alpha."""
    out = [Variant("moco", "none", 1.0)]
    for kind in ("texture", "patch", "texture+patch"):
        out += [Variant(f"{kind} a={alpha:g}", kind, alpha) for alpha in protocol.alphas]
    return out


# --------------------------------------------------------------------------- steps


def make_shards(data: Path, out: Path, protocol: Protocol) -> dict[str, Any]:
    """The real Ray texture job on the train split (``pipeline.job.run``)."""
    import ray

    from pipeline import job
    from pipeline.sources import folder_listing
    from pipeline.synthesis import SynthesisConfig

    started_here = not ray.is_initialized()
    synthesis = SynthesisConfig(steps=protocol.synthesis_steps, batch_size=protocol.synthesis_batch)
    try:
        summary = job.run(job.JobConfig(out=out, split="train", synthesis=synthesis, shard_size=100),
                          folder_listing(data, "train"), show_progress=False)
    finally:
        if started_here:  # free the cores for training; a caller's Ray session is left alone
            ray.shutdown()
    if summary.failed_shards or summary.skipped:
        raise RuntimeError(f"texture job failed shards {summary.failed_shards}, skipped {summary.skipped}")
    return {"images": summary.images, "shards": summary.shards, "seconds": round(summary.seconds, 1),
            "synthesis": synthesis.as_dict()}


def pretrain(shards: Path, out: Path, variant: Variant, seed: int, protocol: Protocol) -> Path:
    """One MoCo v2 run with the real trainer; returns its checkpoint."""
    from trainer.train import TrainConfig, Trainer

    config = TrainConfig(negatives=str(shards), out=str(out), negatives_kind=variant.kind, alpha=variant.alpha,
                         arch=protocol.arch, image_size=protocol.image_size, small_images=protocol.image_size <= 48,
                         batch_size=protocol.batch_size, moco_k=protocol.moco_k, epochs=protocol.epochs,
                         steps_per_epoch=protocol.steps_per_epoch, workers=protocol.workers, seed=seed,
                         shuffle_buffer=protocol.shuffle_buffer)
    trainer = Trainer(config, device="cpu", show_progress=False)
    trainer.fit()
    return trainer.checkpoint_path


def probe(checkpoint_path: Path, data: Path, protocol: Protocol, seed: int) -> dict[str, float]:
    """Linear probe on frozen features of train (shape labels); top-1 % on every evaluation set."""
    from torch.utils.data import DataLoader

    from trainer.checkpoint import load_backbone
    from trainer.eval.features import align_classes, extract_features, load_dataset
    from trainer.eval.probes import top1, train_linear

    backbone, _ = load_backbone(checkpoint_path)

    def features(split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        dataset, classes = load_dataset(data / split, split, protocol.image_size)
        loader = DataLoader(dataset, batch_size=128, shuffle=False, num_workers=0)
        x, y = extract_features(backbone, loader, "cpu", desc=split)
        return x, y, classes

    x_train, y_train, train_classes = features("train")
    head = train_linear(x_train, y_train, len(train_classes), epochs=protocol.probe_epochs, seed=seed)
    results = {"train": 100 * top1(head, x_train, y_train)}
    for split in EVAL_SETS:
        x, y, classes = features(split)
        results[split] = 100 * top1(head, x, align_classes(train_classes, classes)[y])
    return results


# --------------------------------------------------------------------------- reporting


def summarise(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """variant -> set -> {mean, std, n} over seeds (std with ddof=0 when there is one seed)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        rows = [r["top1"] for r in runs if r["variant"] == name]
        table[name] = {}
        for split in ("train",) + EVAL_SETS:
            values = np.array([r[split] for r in rows], dtype=float)
            table[name][split] = {"mean": float(values.mean()), "std": float(values.std(ddof=1 if len(values) > 1 else 0)),
                                  "n": len(values)}
    return table


def markdown(summary: dict[str, dict[str, dict[str, float]]], protocol: Protocol, wall_s: float, quick: bool) -> str:
    header = "| variant | " + " | ".join(EVAL_SETS) + " | train (probe fit) |"
    lines = [
        f"# Mini reproduction: shape vs texture{' (--quick: plumbing only, not a result)' if quick else ''}",
        "",
        "Top-1 % of a linear probe (shape classes) on frozen features, mean ± std over "
        f"{len(protocol.seeds)} pre-training seed(s). Numbers come from this run "
        f"(wall time {wall_s / 60:.1f} min, CPU); chance is {100 / len(shapes.CLASSES):.1f} %.",
        "",
        header,
        "| --- | " + " | ".join("---:" for _ in EVAL_SETS) + " | ---: |",
    ]
    for name, row in summary.items():
        cells = [f"{row[s]['mean']:.1f} ± {row[s]['std']:.1f}" for s in EVAL_SETS + ("train",)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    p = protocol
    lines += [
        "",
        "Protocol (fixed before results were seen; nothing tuned on the out-of-domain sets):",
        f"{len(shapes.CLASSES)} shape classes, 128 px images, per class {p.per_class}, data seed {p.data_seed}; "
        f"texture is the class's typical one with probability {shapes.CLASS_TEXTURE_PROBABILITY} in train/test; "
        f"training texture families {', '.join(shapes.TRAIN_FAMILIES)}, held out {', '.join(shapes.UNSEEN_FAMILIES)}. "
        f"Textures by the real Ray job, steps {p.synthesis_steps} at (56, 112, 224) px (random encoder). "
        f"MoCo v2 {p.arch} at {p.image_size} px, batch {p.batch_size}, K {p.moco_k}, "
        f"{p.epochs} epochs x {p.steps_per_epoch} steps, lr 0.8 x batch / 512 (the trainer's default), "
        f"seeds {p.seeds}, alphas {p.alphas}. "
        f"Linear probe: {p.probe_epochs} epochs on centre-crop features of train.",
    ]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4))
    width = 0.8 / len(EVAL_SETS)
    for i, split in enumerate(EVAL_SETS):
        means = [summary[n][split]["mean"] for n in names]
        stds = [summary[n][split]["std"] for n in names]
        ax.bar(np.arange(len(names)) + (i - (len(EVAL_SETS) - 1) / 2) * width, means, width, yerr=stds,
               label=split, capsize=2)
    ax.axhline(100 / len(shapes.CLASSES), color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("linear-probe top-1 (%)")
    ax.set_title("shape classes, frozen features: in domain (test) and out of domain; mean ± std over seeds",
                 fontsize=9)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    files.atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------- main


def run(out: Path, protocol: Protocol, quick: bool = False, log=print) -> dict[str, Any]:
    """The whole experiment into ``out``; returns the report written to ``out/results.json``."""
    start = time.time()
    out = Path(out)
    if (out / "data").exists():  # regenerated from the seed: never mix in images of another protocol
        shutil.rmtree(out / "data")
    data = shapes.generate(out / "data", protocol.per_class, seed=protocol.data_seed)
    log(f"data: {sum(protocol.per_class.values()) * len(shapes.CLASSES)} images in {time.time() - start:.0f} s")
    shards = make_shards(data, out / "shards", protocol)
    log(f"textures: {shards['images']} in {shards['seconds']} s")
    runs = []
    names = [v.name for v in variants(protocol)]
    for variant in variants(protocol):
        for seed in protocol.seeds:
            t0 = time.time()
            run_dir = out / "runs" / f"{variant.name.replace(' ', '_').replace('=', '')}-seed{seed}"
            ckpt = pretrain(out / "shards", run_dir, variant, seed, protocol)
            t1 = time.time()
            top = probe(ckpt, data, protocol, seed)
            runs.append({"variant": variant.name, "kind": variant.kind, "alpha": variant.alpha, "seed": seed,
                         "top1": top, "train_s": round(t1 - t0, 1), "probe_s": round(time.time() - t1, 1)})
            log(f"{variant.name:18s} seed {seed}: " + " ".join(f"{k} {v:.1f}" for k, v in top.items())
                + f"  ({t1 - t0:.0f} s train, {time.time() - t1:.0f} s probe)")
    summary = summarise(runs, names)
    wall = time.time() - start
    report = {"protocol": {**asdict(protocol), "classes": list(shapes.CLASSES),
                           "train_families": list(shapes.TRAIN_FAMILIES),
                           "unseen_families": list(shapes.UNSEEN_FAMILIES),
                           "class_texture_probability": shapes.CLASS_TEXTURE_PROBABILITY},
              "quick": quick, "textures": shards, "runs": runs, "summary": summary, "wall_s": round(wall, 1),
              "torch_threads": torch.get_num_threads()}
    files.atomic_write_bytes(out / "results.json", json.dumps(report, indent=2).encode("utf-8"))  # variant order kept
    table = markdown(summary, protocol, wall, quick)
    files.atomic_write_bytes(out / "results.md", table.encode("utf-8"))
    plot(summary, out / "results.png")
    log(table)
    log(f"wall time: {wall:.0f} s ({wall / 60:.1f} min); wrote {out}/results.md, results.json, results.png")
    return report


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="[default: runs/mini-repro, or runs/mini-repro-quick with --quick]")
@click.option("--quick", is_flag=True, help="tiny data, 1 seed, 1 alpha, few steps: checks the plumbing in ~1 min")
def main(out: Path, quick: bool) -> None:
    """Shape vs texture, in miniature: MoCo v2 with and without non-semantic negatives."""
    out = out or Path("runs/mini-repro-quick" if quick else "runs/mini-repro")
    run(out, QUICK if quick else FULL, quick=quick, log=click.echo)


if __name__ == "__main__":
    main()
