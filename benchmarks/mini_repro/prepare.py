"""The ``prepare`` stage (CPU, Ray): the world's ImageFolder trees, then the textures of the
pretrain and held-out splits by the real Ray job (``nsneg.pipeline.job``) into shards, and
their noise ratio beside the engine's default schedule's on the same images.

Its output folder is all that the ``train`` and ``search`` stages need, so it can be carried
to a GPU machine without Ray. It is idempotent and resumable: the texture job skips finished
shards, and a texture set of the same images and synthesis is kept.
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

from mini_repro import world
from mini_repro.protocol import HELDOUT, Protocol
from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.sample_reader import iter_samples
from nsneg.pipeline import quality
from nsneg.pipeline.images import resize_short
from nsneg.pipeline.job import JobConfig
from nsneg.pipeline.job import run as run_texture_job
from nsneg.pipeline.sources import folder_listing
from nsneg.pipeline.synthesis import SynthesisConfig, TextureSynthesizer

Log = Callable[[str], None]
PREPARED = "prepared.json"
#: Where ``prepare`` writes the textures: folder -> (world split, shard split).
TEXTURE_SETS = {"shards": ("pretrain", "train"), "heldout-shards": (HELDOUT, HELDOUT)}
#: Textures whose noise ratio is measured (``quality.patch_swd``).
QUALITY_IMAGES = 16
DATA_FIELDS = (
    "world",
    "per_class",
    "data_seed",
    "synthesis_sizes",
    "synthesis_steps",
    "synthesis_batch",
    "generator",
    "pretrain_side",
)


def fingerprint(protocol: Protocol, *fields: str) -> str:
    d = protocol.as_dict()
    return hashlib.sha256(
        json.dumps({k: d[k] for k in fields}, sort_keys=True, default=str).encode()
    ).hexdigest()[:16]


def machine(device: str) -> str:
    import torch

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


def noise_ratios(
    shards: Path, split: str, limit: int = QUALITY_IMAGES, default_images: int = 0
) -> dict[str, Any]:
    """Mean noise ratio (``nsneg.pipeline.quality``: patch SWD to the image's own two crops over
    crop-coloured noise's) of the first ``limit`` textures; with ``default_images``, the first
    that many images' textures are also made with the engine's default schedule and measured
    the same way, beside this set's on the same images."""
    crops_of, ratios = [], []
    rng = np.random.default_rng(0)

    def ratio(texture: np.ndarray, crops: np.ndarray) -> float:
        noise = quality.noise_like(crops, rng)
        return quality.patch_swd(texture, crops) / quality.patch_swd(noise, crops)

    for sample in iter_samples(shards, split):
        resized = np.array(resize_short(sample.source()))
        boxes = sample.meta["crop_boxes"]
        crops = np.stack(  # [2, 96, 96, 3]
            [resized[t:b, left:r] for left, t, r, b in (boxes["center"], boxes["random"])]
        )
        ratios.append(ratio(np.array(sample.texture), crops))  # writable: quality makes tensors
        crops_of.append(crops)
        if len(ratios) == limit:
            break
    out: dict[str, Any] = {"noise_ratio": float(np.mean(ratios)), "quality_images": len(ratios)}
    n = min(default_images, len(crops_of))
    if n:
        synthesizer = TextureSynthesizer(SynthesisConfig(batch_size=n))
        made = synthesizer(np.stack(crops_of[:n]), list(range(n))).textures  # [n, 224, 224, 3]
        out["default_schedule_noise_ratio"] = float(
            np.mean([ratio(t, c) for t, c in zip(made, crops_of[:n])])
        )
        out["this_schedule_noise_ratio_same_images"] = float(np.mean(ratios[:n]))
        out["default_schedule_images"] = n
    return out


def texture_fingerprint(protocol: Protocol, split: str = "pretrain") -> str:
    """What one split's textures depend on: its images (world, seed, count, stored side) and the
    synthesis."""
    d = protocol.as_dict()
    keys = {
        "world": d["world"],
        "data_seed": d["data_seed"],
        split: d["per_class"][split],
        "synthesis": protocol.synthesis.as_dict(),
        "side": d["pretrain_side"] if split == "pretrain" else None,
    }
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_prepared(data: Path, protocol: Protocol) -> dict[str, Any]:
    """``data``'s prepared.json, checked to be of ``protocol``'s data settings."""
    done = Path(data) / PREPARED
    if not done.exists():
        raise FileNotFoundError(
            f"{data} is not prepared: run the prepare stage first (--stage prepare)"
        )
    prepared = json.loads(done.read_text())
    if prepared["fingerprint"] != fingerprint(protocol, *DATA_FIELDS):
        raise ValueError(
            f"{data} was prepared for protocol {prepared['protocol']!r} with other data settings "
            f"than {protocol.name!r}: prepare it again"
        )
    return prepared


def prepare(
    out: Path, protocol: Protocol, log: Log = print, show_progress: bool = True
) -> dict[str, Any]:
    """World + textures into ``out`` (``out/data``, ``out/shards``, ``out/heldout-shards``,
    ``out/prepared.json``); idempotent.

    Made for another protocol, the images are regenerated (a minute at most) and each texture
    set kept where it is of the same images and synthesis, else made again: never mixed.
    """
    out = Path(out)
    key = fingerprint(protocol, *DATA_FIELDS)
    done = out / PREPARED
    previous = json.loads(done.read_text()) if done.exists() else {}
    if previous.get("fingerprint") == key:
        log(f"prepare: {out} is ready (protocol {previous['protocol']}), reused")
        return previous
    old_sets = previous.get("texture_sets") or {}
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
        sides={"pretrain": protocol.pretrain_side} if protocol.pretrain_side else None,
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
            compare = protocol.default_schedule_images if folder == "shards" else 0
            textures = make_textures(
                data, split, out / folder, shard_split, protocol, log, show_progress, compare
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
    default_images: int = 0,
) -> dict[str, Any]:
    """The real Ray job on one split of the world, then the textures' noise ratio (beside the
    default schedule's on ``default_images`` of the same images, unless it is the default)."""
    import ray

    started_here = not ray.is_initialized()
    synthesis = protocol.synthesis
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
    default_schedule = synthesis == SynthesisConfig(batch_size=synthesis.batch_size)
    quality_of = noise_ratios(
        shards, shard_split, default_images=0 if default_schedule else default_images
    )
    log(
        f"textures of {split}: {summary.images} in {seconds:.0f} s, noise ratio "
        f"{quality_of['noise_ratio']:.3f}"
        + (" (the default schedule)" if default_schedule else "")
        + (
            f"; on {quality_of['default_schedule_images']} of the same images "
            f"{quality_of['this_schedule_noise_ratio_same_images']:.3f} against the default "
            f"schedule's {quality_of['default_schedule_noise_ratio']:.3f}"
            if "default_schedule_noise_ratio" in quality_of
            else ""
        )
    )
    return {
        "images": summary.images,
        "shards": summary.shards,
        "seconds": round(seconds, 1),
        "synthesis": synthesis.as_dict(),
        "default_schedule": default_schedule,
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in quality_of.items()},
    }
