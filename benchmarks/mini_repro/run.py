"""The stages of the mini reproduction, through the project's real code.

``prepare`` (CPU, Ray): the world's ImageFolder trees, then the pretrain split's textures
by the real Ray job (``nsneg.pipeline.job``) into shards, and their noise ratio. Its output
folder is all that ``train`` needs, so it can be carried to a GPU machine without Ray.

``train`` (CPU or CUDA, no Ray): for every variant and seed, MoCo v2 pre-training with the
real ``nsneg.trainer.train.Trainer`` on those shards, then a linear probe on frozen features of
``train`` (shape labels), read on test and the three out-of-domain sets. The baseline's
seeds run first and the sanity gate is checked on them before any other variant.

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

from mini_repro import report, world
from mini_repro.protocol import (
    BASELINE,
    EVAL_SETS,
    GATE_MAX_SKETCH_P,
    GATE_MIN_IN_DOMAIN,
    GATE_SEARCH,
    UNTRAINED,
    Protocol,
    Variant,
    chance,
)

# The project's code: every import of it is here (Ray only inside nsneg.pipeline.job.run).
from nsneg.pipeline import contract, files, quality
from nsneg.pipeline.images import resize_short
from nsneg.pipeline.job import JobConfig
from nsneg.pipeline.job import run as run_texture_job
from nsneg.pipeline.sources import folder_listing
from nsneg.pipeline.synthesis import SynthesisConfig
from nsneg.trainer import checkpoint as checkpoints
from nsneg.trainer.eval.features import align_classes, extract_features, load_dataset
from nsneg.trainer.eval.probes import top1, train_linear
from nsneg.trainer.train import TrainConfig, Trainer

Log = Callable[[str], None]
PREPARED = "prepared.json"


class GateFailed(RuntimeError):
    """The MoCo baseline did not learn shape: the variants' comparison would say nothing."""


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


def machine(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"1 x {torch.cuda.get_device_name(0)}"
    return f"{os.cpu_count()} CPU cores, no GPU"


# --------------------------------------------------------------------------- prepare


def texture_noise_ratio(shards: Path, limit: int = 16) -> tuple[float, int]:
    """Mean noise ratio (``nsneg.pipeline.quality``) of the first ``limit`` textures against their own two crops."""
    ratios = []
    rng = np.random.default_rng(0)
    for sample in contract.iter_samples(shards, "train"):
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


def texture_fingerprint(protocol: Protocol) -> str:
    """What the textures depend on: the pretrain images (world, seed, count) and the synthesis."""
    d = protocol.as_dict()
    keys = {
        "world": d["world"],
        "data_seed": d["data_seed"],
        "pretrain": d["per_class"]["pretrain"],
        "synthesis_steps": d["synthesis_steps"],
        "synthesis_batch": d["synthesis_batch"],
    }
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare(
    out: Path, protocol: Protocol, log: Log = print, show_progress: bool = True
) -> dict[str, Any]:
    """World + textures into ``out`` (``out/data``, ``out/shards``, ``out/prepared.json``); idempotent.

    Made for another protocol, the images are regenerated (seconds) and the textures kept
    where they are of the same pretrain images and synthesis, else made again: never mixed.
    """
    out = Path(out)
    key, texture_key = fingerprint(protocol, *DATA_FIELDS), texture_fingerprint(protocol)
    done = out / PREPARED
    previous = json.loads(done.read_text()) if done.exists() else {}
    if previous.get("fingerprint") == key:
        log(f"prepare: {out} is ready (protocol {previous['protocol']}), reused")
        return previous
    keep_textures = previous.get("texture_fingerprint") == texture_key
    for stale in (out / "data", done) + (() if keep_textures else (out / "shards",)):
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
    if keep_textures:
        textures = previous["textures"]
        log(
            f"textures: the {textures['images']} of {out / 'shards'} are of the same images and synthesis, kept"
        )
    else:
        textures = make_textures(data, out / "shards", protocol, log, show_progress)
    prepared = {
        "protocol": protocol.name,
        "fingerprint": key,
        "texture_fingerprint": texture_key,
        "textures": textures,
        "prepare_s": round(time.time() - start + (textures["seconds"] if keep_textures else 0), 1),
        "machine": machine("cpu"),
    }
    files.atomic_write_json(done, prepared)
    return prepared


def make_textures(
    data: Path, shards: Path, protocol: Protocol, log: Log, show_progress: bool
) -> dict[str, Any]:
    """The real Ray job on the pretrain split, then the textures' noise ratio."""
    import ray

    started_here = not ray.is_initialized()
    synthesis = SynthesisConfig(steps=protocol.synthesis_steps, batch_size=protocol.synthesis_batch)
    t0 = time.time()
    try:
        summary = run_texture_job(
            JobConfig(out=shards, split="train", synthesis=synthesis, shard_size=40),
            folder_listing(data, "pretrain"),
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
    ratio, measured = texture_noise_ratio(shards)
    default_schedule = synthesis == SynthesisConfig(batch_size=synthesis.batch_size)
    log(
        f"textures: {summary.images} in {seconds:.0f} s, noise ratio {ratio:.3f}"
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
    """One MoCo v2 run with the real trainer (continues its own checkpoint); returns the checkpoint."""
    p = protocol
    untrained = variant.kind == UNTRAINED
    config = TrainConfig(
        negatives=str(shards),
        out=str(run_dir),
        negatives_kind="none" if untrained else variant.kind,
        alpha=variant.alpha,
        arch=p.arch,
        image_size=p.image_size,
        small_images=p.uses_small_images,
        lr=p.lr,
        batch_size=p.batch_size,
        moco_k=p.moco_k,
        epochs=p.epochs,
        steps_per_epoch=p.steps_per_epoch,
        bn_splits=p.bn_splits,
        workers=p.workers,
        seed=seed,
        shuffle_buffer=p.shuffle_buffer,
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
    checkpoint_path: Path, data: Path, protocol: Protocol, seed: int, device: str
) -> dict[str, Any]:
    """Linear probe on frozen features of ``train`` (shape labels); top-1 % on every set and shape bias."""
    from torch.utils.data import DataLoader

    backbone, _ = checkpoints.load_backbone(checkpoint_path)

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


# --------------------------------------------------------------------------- the gate


def gate(baseline_runs: list[dict[str, Any]], eval_sizes: dict[str, int]) -> dict[str, Any]:
    """The sanity gate on the baseline's runs: in-domain mean >= GATE_MIN_IN_DOMAIN and, on every
    seed, sketch top-1 above chance (one-sided binomial test, p < GATE_MAX_SKETCH_P)."""
    from scipy import stats

    in_domain = float(np.mean([r["top1"]["test"] for r in baseline_runs]))
    n = eval_sizes["sketch"]
    p_values = [
        float(
            stats.binomtest(
                round(r["top1"]["sketch"] * n / 100), n, chance() / 100, alternative="greater"
            ).pvalue
        )
        for r in baseline_runs
    ]
    sketch = float(np.mean([r["top1"]["sketch"] for r in baseline_runs]))
    passed = in_domain >= GATE_MIN_IN_DOMAIN and all(p < GATE_MAX_SKETCH_P for p in p_values)
    reading = (
        f"baseline in-domain top-1 {in_domain:.1f} % (needs >= {GATE_MIN_IN_DOMAIN:.0f}), sketch "
        f"{sketch:.1f} % vs chance {chance():.1f} %, binomial p per seed "
        + ", ".join(f"{p:.1g}" for p in p_values)
        + f" (needs each < {GATE_MAX_SKETCH_P})"
    )
    return {
        "passed": passed,
        "in_domain": in_domain,
        "sketch": sketch,
        "sketch_p": p_values,
        "reading": reading,
    }


# --------------------------------------------------------------------------- train stage


def run_name(variant: Variant, seed: int) -> str:
    return f"{variant.name.replace(' ', '_').replace('=', '').replace('+', '-')}-seed{seed}"


def train(
    out: Path, protocol: Protocol, device: str = "cpu", log: Log = print, show_progress: bool = True
) -> dict[str, Any]:
    """Every variant x seed on a prepared ``out``; writes results.json/.md/.png and gate_search.png
    there; returns the report."""
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
    key = fingerprint(protocol, *RUN_FIELDS)
    eval_sizes = {s: protocol.per_class[s] * len(world.CLASSES) for s in EVAL_SETS}
    order = [v for v in protocol.variants if v.name == BASELINE] + [
        v for v in protocol.variants if v.name != BASELINE
    ]
    jobs = [(v, s) for v in order for s in protocol.seeds]
    runs: list[dict[str, Any]] = []
    gate_reading = None

    def write_report(complete: bool) -> dict[str, Any]:
        """results.json/.md/.png of the runs so far (after every run: a stopped job leaves a valid report)."""
        reading = gate_reading or gate([r for r in runs if r["variant"] == BASELINE], eval_sizes)
        names = [v.name for v in order if any(r["variant"] == v.name for r in runs)]
        wall = time.time() - start + prepared["prepare_s"]
        full_report = {
            "protocol": protocol.as_dict(),
            "complete": complete,
            "machine": machine(device),
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_now": [round(x, 2) for x in os.getloadavg()],
            "wall_s": round(wall, 1),
            "prepare_s": prepared["prepare_s"],
            "train_s": round(time.time() - start, 1),
            "textures": prepared["textures"],
            "gate": reading,
            "gate_search": list(GATE_SEARCH),
            "runs": [{k: v for k, v in r.items() if k != "fingerprint"} for r in runs],
            "summary": report.summarise(runs, names),
        }
        files.atomic_write_json(
            out / "results.json", full_report, sort_keys=False
        )  # variant order kept
        files.atomic_write_text(out / "results.md", report.markdown(full_report, protocol))
        report.plot(
            full_report["summary"],
            f"mini reproduction ({protocol.name}): shape classes, frozen features, "
            f"mean ± std over {len(protocol.seeds)} seeds",
            out / "results.png",
        )
        return full_report

    report.plot_gate_search(list(GATE_SEARCH), out / "gate_search.png")  # fixed: drawn once
    bar = tqdm(total=len(jobs), desc="mini-repro runs", unit="run", disable=not show_progress)
    for variant, seed in jobs:
        if variant.name != BASELINE and gate_reading is None:
            gate_reading = gate([r for r in runs if r["variant"] == BASELINE], eval_sizes)
            log(
                f"gate {'PASSED' if gate_reading['passed'] else 'FAILED'}: {gate_reading['reading']}"
            )
            if not gate_reading["passed"] and protocol.enforce_gate:
                break
        run_dir = out / "runs" / run_name(variant, seed)
        cached = run_dir / "result.json"
        if cached.exists() and json.loads(cached.read_text()).get("fingerprint") == key:
            result = json.loads(cached.read_text())
            log(f"{variant.name:18s} seed {seed}: kept from an earlier run")
        else:
            t0 = time.time()
            ckpt = pretrain(shards, run_dir, variant, seed, protocol, device, show_progress)
            t1 = time.time()
            result = {
                "variant": variant.name,
                "kind": variant.kind,
                "alpha": variant.alpha,
                "seed": seed,
                **probe(ckpt, data, protocol, seed, device),
                "train_s": round(t1 - t0, 1),
                "probe_s": round(time.time() - t1, 1),
                "fingerprint": key,
            }
            files.atomic_write_json(cached, result)
            bias = "n/a" if result["shape_bias"] is None else f"{result['shape_bias']:.2f}"
            log(
                f"{variant.name:18s} seed {seed}: "
                + " ".join(f"{k} {v:.1f}" for k, v in result["top1"].items())
                + f" shape_bias {bias} ({result['train_s']:.0f} s train, {result['probe_s']:.0f} s probe)"
            )
        runs.append(result)
        bar.update()
        write_report(complete=False)
    bar.close()
    gate_reading = gate_reading or gate([r for r in runs if r["variant"] == BASELINE], eval_sizes)
    full_report = write_report(complete=len(runs) == len(jobs))
    log(report.markdown(full_report, protocol))
    log(
        f"wall time: {full_report['wall_s']:.0f} s ({full_report['wall_s'] / 60:.1f} min); "
        f"wrote {out}/results.md, results.json, results.png"
    )
    if not gate_reading["passed"] and protocol.enforce_gate:
        raise GateFailed(f"sanity gate failed, variants not trained: {gate_reading['reading']}")
    return full_report


def run(
    out: Path, protocol: Protocol, device: str = "cpu", log: Log = print, show_progress: bool = True
):
    """Both stages."""
    prepare(out, protocol, log, show_progress)
    return train(out, protocol, device, log, show_progress)
