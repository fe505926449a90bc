"""Time of batched patch-based negatives vs the per-patch Python loop and a plain copy, in one run.

All three read the same random batch of views on the same device:
  vectorized  ``nsneg.trainer.negatives.patch_negatives`` (num=1): one gather for the whole batch;
  loop        the paper's released method (``NonSemanticAug``): per image a patch size, then a
              Python loop over tile rows and columns copying a random s x s patch into a canvas;
  clone       ``x.clone()``, the memory-bound floor for producing a batch-sized output;
  copy_       the same copy into a preallocated buffer: shows how much of ``clone`` (and of
              the others) is the first touch of freshly allocated pages rather than copying.

    python benchmarks/bench_patch_negatives.py [--batch 64 --size 224 --device cpu|cuda --repeat 20 --threads N]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import click
import numpy as np
import torch

from nsneg.datasets_manifest.format.files import atomic_write_json
from nsneg.trainer.negatives import REFERENCE_SIZE, patch_negatives


def loop_negatives(
    views: torch.Tensor, size_range: tuple[int, int] = (16, 72), seed: int = 0
) -> torch.Tensor:
    """Reference: the paper's ``NonSemanticAug`` (moco/loader.py) applied image by image.

    Per image: draw a patch size, allocate a canvas of ``(H // s + 1) * s`` pixels a side, copy one
    random s x s patch per tile in a Python loop, crop the canvas to the view and clone it; the
    per-image results are stacked into the batch, as the data loader's collate would do. The
    sampling follows ``patch_negatives`` (sizes scaled by H / 224, origins in [0, H - s]).
    """
    rng = np.random.RandomState(seed)
    b, c, h, w = views.shape
    lo, hi = (min(max(1, round(v * h / REFERENCE_SIZE)), h, w) for v in size_range)
    negatives = []
    for img in views:
        s = int(rng.randint(lo, hi + 1))
        rows, cols = h // s + 1, w // s + 1
        canvas = torch.zeros((c, rows * s, cols * s), dtype=views.dtype, device=views.device)
        for i in range(rows):
            for j in range(cols):
                y, x = rng.randint(0, h - s + 1), rng.randint(0, w - s + 1)
                canvas[:, i * s : (i + 1) * s, j * s : (j + 1) * s] = img[:, y : y + s, x : x + s]
        negatives.append(canvas[:, :h, :w].clone())
    return torch.stack(negatives).unsqueeze(1)


def median_ms(
    methods: dict[str, tuple[Callable[[], torch.Tensor], int]], device: torch.device
) -> dict[str, float]:
    """Median wall time of each method; rounds are interleaved so that load drifts hit all alike."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn, _ in methods.values():  # warm-up: allocator, thread pool, kernels
        fn()
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(max(n for _, n in methods.values())):
        for name, (fn, n) in methods.items():
            if r < n:
                start = time.perf_counter()
                fn()
                sync()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


@click.command()
@click.option("--batch", default=64, show_default=True)
@click.option("--size", default=224, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--repeat",
    default=20,
    show_default=True,
    help="timed calls per method (the loop: a quarter, at least 3)",
)
@click.option(
    "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def main(
    batch: int, size: int, device: str, repeat: int, threads: int | None, json_path: str | None
) -> None:
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda":
        name = f"{torch.cuda.get_device_name(dev)} (cuda)"
    else:
        name = f"cpu, {torch.get_num_threads()} torch threads"
    print(f"device: {name}; batch {batch}x3x{size}x{size} float32; torch {torch.__version__}")

    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    seeds = iter(range(10**9))
    buffer = torch.empty_like(x)
    times = median_ms(
        {
            "vectorized": (lambda: patch_negatives(x, num=1, generator=gen), repeat),
            "loop": (lambda: loop_negatives(x, seed=next(seeds)), max(3, repeat // 4)),
            "clone": (lambda: x.clone(), repeat),
            "copy_": (lambda: buffer.copy_(x), repeat),  # clone minus allocation (page faults)
        },
        dev,
    )
    for label, ms in times.items():
        print(f"{label:<11s}{ms:9.2f} ms (median)")
    print(
        f"speed-up vs loop: {times['loop'] / times['vectorized']:.1f}x; "
        f"slowdown vs clone: {times['vectorized'] / times['clone']:.2f}x"
    )
    if json_path:
        atomic_write_json(
            json_path,
            {
                "device": name,
                "batch": batch,
                "size": size,
                **{f"{k.rstrip('_')}_ms": v for k, v in times.items()},
            },
        )


if __name__ == "__main__":
    main()
