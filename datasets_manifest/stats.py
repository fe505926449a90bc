"""What a shard set holds: samples per class, skips, generator, the texture losses' spread, and
the textures' quality: their spatial fingerprint (``nsneg.pipeline.fingerprint``, every texture)
and, where the set holds the source pixels, their noise ratio (``nsneg.pipeline.quality``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.constants import CROP_SIZE, TEXTURE_SIZE
from nsneg.datasets_manifest.format.manifest import load_manifest
from nsneg.datasets_manifest.format.sample_reader import BadSample, TextureSample, iter_samples
from nsneg.datasets_manifest.format.skip_log import DEFAULT_MAX_SKIP_FRACTION, SkipLog
from nsneg.pipeline import fingerprint, quality
from nsneg.pipeline.images import resize_short

#: Textures per split whose noise ratio is measured (spread evenly over the split): ~50 ms each.
NOISE_RATIO_SAMPLES = 64


def sample_crops(sample: TextureSample) -> np.ndarray | None:
    """uint8 [2, 96, 96, 3]: the two crops a texture was made from, cut again from its source
    (resized as the job resized it), or None where the sample has no source or no crop boxes."""
    try:
        source, meta = sample.source(), sample.meta
    except BadSample:  # an unreadable source: its texture still counts, its noise ratio is not read
        return None
    boxes, resized = meta.get("crop_boxes"), meta.get("resized_size")
    if source is None or not isinstance(boxes, dict) or not isinstance(resized, list):
        return None
    boxes = [boxes.get("center"), boxes.get("random")]
    if not resized or not all(isinstance(b, list) and len(b) == 4 for b in boxes):
        return None
    image = resize_short(source, int(min(resized)))
    crops = [np.asarray(image.crop(tuple(b))) for b in boxes]
    if any(c.shape != (CROP_SIZE, CROP_SIZE, 3) for c in crops):
        return None
    return np.stack(crops)


def shard_stats(root: Path, max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION) -> dict[str, Any]:
    """Counts from the manifest plus one pass over the samples through the sample policy
    (``iter_samples``): ``bad_samples`` per split is its skip report."""
    manifest = load_manifest(root)
    stats: dict[str, Any] = {
        "generator": manifest["generator"],
        "has_source": manifest["has_source"],
        "splits": {},
    }
    for split, info in manifest["splits"].items():
        per_class: Counter[str] = Counter()
        losses = []
        skips = SkipLog(max_skip_fraction)
        prints = fingerprint.FingerprintAccumulator()
        ratios = []
        every = max(1, -(-info["samples"] // NOISE_RATIO_SAMPLES))  # ceil: at most that many
        for i, sample in enumerate(iter_samples(root, split, skips)):
            per_class[manifest["classes"][sample.cls]] += 1
            if isinstance(sample.meta.get("loss"), int | float):
                losses.append(float(sample.meta["loss"]))
            texture = np.array(sample.texture.convert("RGB"))  # writable: torch reads it
            prints.add(texture)
            crops = sample_crops(sample) if manifest["has_source"] and i % every == 0 else None
            if crops is not None and texture.shape == (TEXTURE_SIZE,) * 2 + (3,):
                ratios.append(quality.noise_ratio(texture, crops))
        measured = prints.result()
        reasons = Counter(s["reason"].split(":")[0].split(" (")[0] for s in info["skipped"])
        stats["splits"][split] = {
            "samples": info["samples"],
            "shards": len(info["shards"]),
            "bytes": info["bytes"],
            "complete": info["complete"],
            "per_class": dict(sorted(per_class.items())),
            "skipped": len(info["skipped"]),
            "skip_reasons": dict(reasons),
            "bad_samples": skips.finish(),
            "losses": losses,
            "fingerprint": measured.as_dict() if measured else None,
            "noise_ratio": {"mean": float(np.mean(ratios)), "textures": len(ratios)}
            if ratios
            else None,
        }
    return stats


def loss_histogram(stats: dict[str, Any], out: Path) -> Path:
    """PNG histogram of the final Gram loss per texture, one series per split (lower = closer match)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for split, info in stats["splits"].items():
        if info["losses"]:
            ax.hist(info["losses"], bins=30, alpha=0.6, label=f"{split} ({len(info['losses'])})")
    ax.set_xlabel("final Gram loss of the texture (relative, summed over layers)")
    ax.set_ylabel("textures")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if any(info["losses"] for info in stats["splits"].values()):
        ax.legend()
    else:  # an imported set: its external generator recorded no losses
        ax.text(0.5, 0.5, "no texture losses recorded", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    files.atomic_write_bytes(Path(out), buf.getvalue())
    return Path(out)
