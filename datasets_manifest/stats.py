"""What a shard set holds: samples per class, skips, generator, and the texture losses' spread."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.manifest import load_manifest
from nsneg.datasets_manifest.format.sample_reader import iter_samples
from nsneg.datasets_manifest.format.skip_log import DEFAULT_MAX_SKIP_FRACTION, SkipLog


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
        for sample in iter_samples(root, split, skips):
            per_class[manifest["classes"][sample.cls]] += 1
            if isinstance(sample.meta.get("loss"), int | float):
                losses.append(float(sample.meta["loss"]))
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
