"""Training-step img/s with and without non-semantic negatives, and the loader's img/s, in one run.

Baseline: a plain MoCo v2 step (``--negatives-kind none``) on the same model and batch.
Goal: one texture + one patch negative cost <= 1.6x a plain step.

    python benchmarks/bench_train_step.py [--shards DIR] [--arch resnet50 --image-size 224 --batch-size 256]

Without ``--shards`` a small shard set is made from the embedded photos first (few steps).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import torch

from trainer.train import TrainConfig, Trainer


def make_shards(out: Path) -> Path:
    from pipeline import job
    from pipeline.sources import embedded_listing
    from pipeline.synthesis import SynthesisConfig

    job.run(job.JobConfig(out=out, synthesis=SynthesisConfig(steps=(4, 2, 1)), shard_size=5), embedded_listing(),
            show_progress=False)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@click.command()
@click.option("--shards", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--arch", default="resnet18", show_default=True)
@click.option("--image-size", type=int, default=64, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--steps", type=int, default=5, show_default=True, help="timed steps per variant")
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--device", default=None)
def main(shards, arch, image_size, batch_size, steps, workers, device) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shards = shards or make_shards(Path(tmp) / "shards")
        base = dict(negatives=str(shards), out=tmp, arch=arch, image_size=image_size, batch_size=batch_size,
                    moco_k=batch_size * 16, epochs=1, steps_per_epoch=steps, workers=workers)
        trainer = Trainer(TrainConfig(**base), device=device, show_progress=False)
        loader = trainer.loader(trainer.config.seed, steps + 1)
        start = None
        batches = []
        for i, batch in enumerate(loader):  # the first batch pays worker start-up
            if i == 0:
                start = time.perf_counter()
            batches.append(batch)
        loader_rate = steps * batch_size / (time.perf_counter() - start)
        results = {}
        for kind in ("none", "texture", "patch", "texture+patch"):
            trainer = Trainer(TrainConfig(**base, negatives_kind=kind), device=device, show_progress=False)
            generator = torch.Generator().manual_seed(0)
            trainer.train_step(batches[0], generator)  # warm-up
            sync(trainer.device)
            start = time.perf_counter()
            for batch in batches[1:]:
                trainer.train_step(batch, generator)
            sync(trainer.device)
            results[kind] = steps * batch_size / (time.perf_counter() - start)
    device_name = torch.cuda.get_device_name() if trainer.device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device_name}; {arch} at {image_size} px, batch {batch_size}, {steps} timed steps")
    print(f"loader ({workers} workers, decode + 3 crops): {loader_rate:8.1f} img/s")
    for kind, rate in results.items():
        print(f"step {kind:14s} {rate:8.1f} img/s   cost vs plain MoCo: {results['none'] / rate:.2f}x")


if __name__ == "__main__":
    main()
