"""The stages of the mini reproduction, through the project's real code.

``prepare`` (CPU, Ray): the world's ImageFolder trees, then the pretrain split's textures
by the real Ray job (``nsneg.pipeline.job``) into shards, and their noise ratio. Its output
folder is all that ``train`` needs, so it can be carried to a GPU machine without Ray.

``train`` (CPU or CUDA, no Ray): for every seed and row, pre-training (MoCo v2 or the
trainer's other methods) with the real ``nsneg.trainer.train.Trainer`` on those shards, then
a linear probe on frozen features of ``train`` (shape labels), read on test and the three
out-of-domain sets, and the representation reading and shortcut controls on the held-out
images (``mini_repro.readings``). Every row always runs; the sanity readings are facts in
the report, never a stop.

A run that is stopped resumes: finished runs are kept (``runs/*/result.json``), an
unfinished pre-training continues from its last checkpoint, the texture job skips
finished shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mini_repro import readings, report, world
from mini_repro.protocol import (
    BASELINE,
    EVAL_SETS,
    HELDOUT,
    MEASURES,
    PATCH_SIZE_RANGE,
    SKETCH_P,
    UNTRAINED,
    Protocol,
    Variant,
    chance,
)

# The project's code: every import of it is here (Ray only inside nsneg.pipeline.job.run).
from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.sample_reader import iter_samples
from nsneg.pipeline import quality
from nsneg.pipeline.images import resize_short
from nsneg.pipeline.job import JobConfig
from nsneg.pipeline.job import run as run_texture_job
from nsneg.pipeline.sources import folder_listing
from nsneg.pipeline.synthesis import SynthesisConfig
from nsneg.trainer import checkpoint as checkpoints
from nsneg.trainer.config import TrainConfig
from nsneg.trainer.eval.features import align_classes, extract_features, load_dataset
from nsneg.trainer.eval.probes import top1, train_linear
from nsneg.trainer.train import Trainer

Log = Callable[[str], None]
PREPARED = "prepared.json"
#: Where ``prepare`` writes the textures: folder -> (world split, shard split).
TEXTURE_SETS = {"shards": ("pretrain", "train"), "heldout-shards": (HELDOUT, HELDOUT)}


def fingerprint(protocol: Protocol, *fields: str) -> str:
    d = protocol.as_dict()
    return hashlib.sha256(
        json.dumps({k: d[k] for k in fields}, sort_keys=True, default=str).encode()
    ).hexdigest()[:16]


DATA_FIELDS = ("world", "per_class", "data_seed", "synthesis_steps", "synthesis_batch")
RUN_FIELDS = DATA_FIELDS + (
    "arch",
    "image_size",
    "batch_size",
    "moco_k",
    "epochs",
    "steps_per_epoch",
    "bn_splits",
    "lr",
    "small_images",
    "shuffle_buffer",
    "probe_epochs",
)


def run_fingerprint(protocol: Protocol) -> str:
    """What a kept run's result depends on: the run settings and the readings it holds (a result
    written with other readings is made again, not read with missing ones)."""
    return hashlib.sha256(
        (fingerprint(protocol, *RUN_FIELDS) + json.dumps(MEASURES)).encode()
    ).hexdigest()[:16]


def machine(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"1 x {torch.cuda.get_device_name(0)}"
    return f"{os.cpu_count()} CPU cores{cpu_model()}, no GPU"


def cpu_model() -> str:
    """`` of <model name>`` from /proc/cpuinfo (Linux), else nothing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " of " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


# --------------------------------------------------------------------------- prepare


def texture_noise_ratio(shards: Path, split: str = "train", limit: int = 16) -> tuple[float, int]:
    """Mean noise ratio (``nsneg.pipeline.quality``) of the first ``limit`` textures against their own two crops."""
    ratios = []
    rng = np.random.default_rng(0)
    for sample in iter_samples(shards, split):
        resized = np.array(resize_short(sample.source()))
        boxes = sample.meta["crop_boxes"]
        crops = np.stack(
            [resized[t:b, left:r] for left, t, r, b in (boxes["center"], boxes["random"])]
        )
        texture = np.array(sample.texture)  # writable: quality makes tensors of it
        ratios.append(
            quality.patch_swd(texture, crops)
            / quality.patch_swd(quality.noise_like(crops, rng), crops)
        )
        if len(ratios) == limit:
            break
    return float(np.mean(ratios)), len(ratios)


def texture_fingerprint(protocol: Protocol, split: str = "pretrain") -> str:
    """What one split's textures depend on: its images (world, seed, count) and the synthesis."""
    d = protocol.as_dict()
    keys = {
        "world": d["world"],
        "data_seed": d["data_seed"],
        split: d["per_class"][split],
        "synthesis_steps": d["synthesis_steps"],
        "synthesis_batch": d["synthesis_batch"],
    }
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare(
    out: Path, protocol: Protocol, log: Log = print, show_progress: bool = True
) -> dict[str, Any]:
    """World + textures into ``out`` (``out/data``, ``out/shards``, ``out/heldout-shards``,
    ``out/prepared.json``); idempotent.

    Made for another protocol, the images are regenerated (seconds) and each texture set kept
    where it is of the same images and synthesis, else made again: never mixed.
    """
    out = Path(out)
    key = fingerprint(protocol, *DATA_FIELDS)
    done = out / PREPARED
    previous = json.loads(done.read_text()) if done.exists() else {}
    if previous.get("fingerprint") == key:
        log(f"prepare: {out} is ready (protocol {previous['protocol']}), reused")
        return previous
    old_sets = previous.get("texture_sets") or (  # a folder prepared before held-out textures
        {"shards": {**previous["textures"], "fingerprint": previous["texture_fingerprint"]}}
        if "texture_fingerprint" in previous
        else {}
    )
    keep = {
        folder: old_sets.get(folder, {}).get("fingerprint") == texture_fingerprint(protocol, split)
        for folder, (split, _) in TEXTURE_SETS.items()
    }
    for stale in (out / "data", done) + tuple(out / f for f, kept in keep.items() if not kept):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    start = time.time()
    data = world.generate(
        out / "data",
        protocol.world,
        protocol.per_class,
        seed=protocol.data_seed,
        show_progress=show_progress,
    )
    n = sum(protocol.per_class.values()) * len(world.CLASSES)
    log(f"world: {n} images in {time.time() - start:.0f} s")
    texture_sets, kept_seconds = {}, 0.0
    for folder, (split, shard_split) in TEXTURE_SETS.items():
        if keep[folder]:
            textures = old_sets[folder]
            kept_seconds += textures["seconds"]
            log(
                f"textures: the {textures['images']} of {out / folder} are of the same images and "
                "synthesis, kept"
            )
        else:
            textures = make_textures(
                data, split, out / folder, shard_split, protocol, log, show_progress
            )
            textures["fingerprint"] = texture_fingerprint(protocol, split)
        texture_sets[folder] = textures
    prepared = {
        "protocol": protocol.name,
        "fingerprint": key,
        "texture_sets": texture_sets,
        "textures": texture_sets["shards"],
        "prepare_s": round(time.time() - start + kept_seconds, 1),
        "machine": machine("cpu"),
    }
    files.atomic_write_json(done, prepared)
    return prepared


def make_textures(
    data: Path,
    split: str,
    shards: Path,
    shard_split: str,
    protocol: Protocol,
    log: Log,
    show_progress: bool,
) -> dict[str, Any]:
    """The real Ray job on one split of the world, then the textures' noise ratio."""
    import ray

    started_here = not ray.is_initialized()
    synthesis = SynthesisConfig(steps=protocol.synthesis_steps, batch_size=protocol.synthesis_batch)
    t0 = time.time()
    try:
        summary = run_texture_job(
            JobConfig(out=shards, split=shard_split, synthesis=synthesis, shard_size=40),
            folder_listing(data, split),
            show_progress=show_progress,
        )
    finally:
        if started_here:  # free the cores for training; a caller's Ray session is left alone
            ray.shutdown()
    if summary.failed_shards or summary.skipped:
        raise RuntimeError(
            f"texture job failed shards {summary.failed_shards}, skipped {summary.skipped}"
        )
    seconds = time.time() - t0
    ratio, measured = texture_noise_ratio(shards, shard_split)
    default_schedule = synthesis == SynthesisConfig(batch_size=synthesis.batch_size)
    log(
        f"textures of {split}: {summary.images} in {seconds:.0f} s, noise ratio {ratio:.3f}"
        + (" (the default schedule)" if default_schedule else "")
    )
    return {
        "images": summary.images,
        "shards": summary.shards,
        "seconds": round(seconds, 1),
        "synthesis": synthesis.as_dict(),
        "noise_ratio": round(ratio, 4),
        "default_schedule": default_schedule,
        "quality_images": measured,
    }


# --------------------------------------------------------------------------- one run


def pretrain(
    shards: Path,
    run_dir: Path,
    variant: Variant,
    seed: int,
    protocol: Protocol,
    device: str,
    show_progress: bool,
) -> Path:
    """One pre-training run with the real trainer (continues its own checkpoint); returns the checkpoint."""
    p = protocol
    untrained = variant.kind == UNTRAINED
    config = TrainConfig(
        negatives=str(shards),
        out=str(run_dir),
        negatives_kind="none" if untrained else variant.kind,
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
    )
    trainer = Trainer(config, device=device, show_progress=show_progress)
    if untrained:  # the seed's initial weights, saved as they are
        trainer.out.mkdir(parents=True, exist_ok=True)
        trainer.save(epoch_complete=False)
        return trainer.checkpoint_path
    if trainer.checkpoint_path.exists():
        if checkpoints.load(trainer.checkpoint_path)["config"]["epochs"] == p.epochs:
            trainer.restore(trainer.checkpoint_path)
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


# --------------------------------------------------------------------------- sanity readings


def sanity(runs: list[dict[str, Any]], eval_sizes: dict[str, int]) -> dict[str, Any]:
    """Two facts about the baseline, each with what it means for reading the differences:
    does it beat its untrained network in domain (paired 95 % interval above zero), and does
    it transfer shape to outlines (sketch above chance on every seed, one-sided binomial test
    at ``SKETCH_P``). Never a stop."""
    from scipy import stats

    base = {r["seed"]: r for r in runs if r["variant"] == BASELINE}
    untrained = {r["seed"]: r for r in runs if r["kind"] == UNTRAINED}
    if not base:
        return {"facts": [], "consequences": []}
    in_domain = float(np.mean([r["top1"]["test"] for r in base.values()]))
    seeds = sorted(set(base) & set(untrained))
    d = [base[s]["top1"]["test"] - untrained[s]["top1"]["test"] for s in seeds]
    ci = report.paired_interval(d)
    learns = None if ci is None else ci[0] > 0
    n = eval_sizes["sketch"]
    p_values = [
        float(
            stats.binomtest(
                round(r["top1"]["sketch"] * n / 100), n, chance() / 100, alternative="greater"
            ).pvalue
        )
        for r in base.values()
    ]
    sketch = float(np.mean([r["top1"]["sketch"] for r in base.values()]))
    transfers = all(p < SKETCH_P for p in p_values)
    answer = {True: "yes", False: "no", None: "not known (fewer than two paired seeds)"}
    facts = [
        {
            "label": "the baseline learns more shape in domain than its untrained network",
            "answer": answer[learns],
            "detail": f"in domain {in_domain:.1f} %, difference to untrained "
            + (f"{np.mean(d):+.1f}" if d else "n/a")
            + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")
            + f" over seeds {seeds}",
        },
        {
            "label": "the baseline transfers shape to outlines",
            "answer": answer[transfers],
            "detail": f"sketch {sketch:.1f} % vs chance {chance():.1f} %, one-sided binomial p per "
            f"seed {', '.join(f'{p:.1g}' for p in p_values)} (yes: each < {SKETCH_P})",
        },
    ]
    consequences = [
        "Pre-training at this budget adds in-domain shape accuracy: the rows' differences are "
        "differences between networks that learned something."
        if learns
        else "Pre-training at this budget adds no in-domain accuracy that the interval can "
        "show: a difference between rows says how the negatives change a barely trained "
        "network, not what it learned to see.",
        "Sketch differences can be read as shape transfer."
        if transfers
        else "Sketch differences cannot be read as shape transfer (the baseline is at chance "
        "there). Shape bias, cue conflict and unseen textures still read how much a network's "
        "decisions follow texture, and the representation reading and the controls do not "
        "depend on outlines.",
    ]
    return {
        "facts": facts,
        "consequences": consequences,
        "in_domain": in_domain,
        "in_domain_vs_untrained": {"diff": float(np.mean(d)) if d else None, "ci95": ci},
        "learns_beyond_untrained": learns,
        "sketch": sketch,
        "sketch_p": p_values,
        "transfers_to_outlines": transfers,
    }


# --------------------------------------------------------------------------- train stage


def run_name(variant: Variant, seed: int) -> str:
    return f"{variant.name.replace(' ', '_').replace('=', '').replace('+', '-')}-seed{seed}"


def train(
    out: Path, protocol: Protocol, device: str = "cpu", log: Log = print, show_progress: bool = True
) -> dict[str, Any]:
    """Every seed x row on a prepared ``out``; writes results.json/.md/.png there; returns the report."""
    from tqdm import tqdm

    out = Path(out)
    start = time.time()
    load_before = os.getloadavg()
    done = out / PREPARED
    if not done.exists():
        raise FileNotFoundError(
            f"{out} is not prepared: run the prepare stage first (--stage prepare)"
        )
    prepared = json.loads(done.read_text())
    if prepared["fingerprint"] != fingerprint(protocol, *DATA_FIELDS):
        raise ValueError(
            f"{out} was prepared for protocol {prepared['protocol']!r} with other data settings "
            f"than {protocol.name!r}: prepare it again"
        )
    data, shards = out / "data", out / "shards"
    held = readings.heldout_views(
        out / "heldout-shards", HELDOUT, protocol.image_size, seed=protocol.data_seed
    )
    key = run_fingerprint(protocol)
    eval_sizes = {s: protocol.per_class[s] * len(world.CLASSES) for s in EVAL_SETS}
    # Seed by seed, the untrained reference first: a stopped job leaves paired rows behind.
    order = [v for v in protocol.variants if v.kind == UNTRAINED] + [
        v for v in protocol.variants if v.kind != UNTRAINED
    ]
    jobs = [(v, s) for s in protocol.seeds for v in order]
    runs: list[dict[str, Any]] = []

    def write_report(complete: bool, plot: bool) -> dict[str, Any]:
        """results.json/.md of the runs so far (after every run: a stopped job leaves a valid
        report), and results.png when ``plot``."""
        names = [v.name for v in protocol.variants if any(r["variant"] == v.name for r in runs)]
        wall = time.time() - start + prepared["prepare_s"]
        full_report = {
            "protocol": protocol.as_dict(),
            "complete": complete,
            "machine": machine(device),
            "device": device,
            "budget": protocol.budget,
            "torch_threads": torch.get_num_threads(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_now": [round(x, 2) for x in os.getloadavg()],
            "wall_s": round(wall, 1),
            "prepare_s": prepared["prepare_s"],
            "train_s": round(time.time() - start, 1),
            "textures": prepared["textures"],
            "texture_sets": prepared.get("texture_sets", {}),
            "sanity": sanity(runs, eval_sizes),
            "runs": [{k: v for k, v in r.items() if k != "fingerprint"} for r in runs],
            "summary": report.summarise(runs, names, protocol.variants),
        }
        files.atomic_write_json(out / "results.json", full_report, sort_keys=False)
        files.atomic_write_text(out / "results.md", report.markdown(full_report, protocol))
        if plot:
            report.plot_effects(
                full_report["summary"],
                f"mini reproduction ({protocol.name}, {machine(device)}): paired difference to "
                f"the row each is compared with, mean and 95 % t-interval over "
                f"{len(protocol.seeds)} seeds",
                out / "results.png",
            )
        return full_report

    bar = tqdm(total=len(jobs), desc="mini-repro runs", unit="run", disable=not show_progress)
    for variant, seed in jobs:
        run_dir = out / "runs" / run_name(variant, seed)
        cached = run_dir / "result.json"
        if cached.exists() and json.loads(cached.read_text()).get("fingerprint") == key:
            result = json.loads(cached.read_text())
            log(f"{variant.name:18s} seed {seed}: kept from an earlier run")
        else:
            t0 = time.time()
            ckpt = pretrain(shards, run_dir, variant, seed, protocol, device, show_progress)
            t1 = time.time()
            backbone, _ = checkpoints.load_backbone(ckpt)
            result = {
                "variant": variant.name,
                "kind": variant.kind,
                "alpha": variant.alpha,
                "method": variant.method,
                "seed": seed,
                **probe(backbone, data, protocol, seed, device),
                "readings": readings.read(backbone, held, device, protocol.probe_epochs, seed),
                "train_s": round(t1 - t0, 1),
                "probe_s": round(time.time() - t1, 1),
                "fingerprint": key,
            }
            files.atomic_write_json(cached, result)
            bias = "n/a" if result["shape_bias"] is None else f"{result['shape_bias']:.2f}"
            log(
                f"{variant.name:18s} seed {seed}: "
                + " ".join(f"{k} {v:.1f}" for k, v in result["top1"].items())
                + f" shape_bias {bias} ({result['train_s']:.0f} s train, "
                f"{result['probe_s']:.0f} s probes and readings)"
            )
        runs.append(result)
        bar.update()
        write_report(complete=False, plot=False)  # the plot (a dozen panels) once, at the end
    bar.close()
    full_report = write_report(complete=len(runs) == len(jobs), plot=True)
    log(report.markdown(full_report, protocol))
    log(
        f"wall time: {full_report['wall_s']:.0f} s ({full_report['wall_s'] / 60:.1f} min); "
        f"wrote {out}/results.md, results.json, results.png"
    )
    return full_report


def run(
    out: Path, protocol: Protocol, device: str = "cpu", log: Log = print, show_progress: bool = True
):
    """Both stages."""
    prepare(out, protocol, log, show_progress)
    return train(out, protocol, device, log, show_progress)
