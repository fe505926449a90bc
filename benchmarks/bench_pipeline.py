"""End-to-end textures/s of the Ray job on the embedded set vs the bare synthesiser, in one run.

Baseline: the same images through ``TextureSynthesizer`` in this process (no Ray, no
decoding, no PNG, no tar). The job's figure includes Ray start-up, workers loading the
encoder, image decoding, crops, PNG encoding, shard writing and hashing.

    python benchmarks/bench_pipeline.py [--json FILE]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch

from nsneg.datasets_manifest.format.files import atomic_write_json
from nsneg.pipeline import job
from nsneg.pipeline.images import make_crops
from nsneg.pipeline.sources import embedded_listing
from nsneg.pipeline.synthesis import SynthesisConfig, TextureSynthesizer


@click.command()
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(json_path: Path | None) -> None:
    listing = embedded_listing()
    config = SynthesisConfig()
    crops = np.stack(
        [
            make_crops(
                Path(im.path).read_bytes(), np.random.default_rng(job.image_seed(0, im.key))
            ).pixels
            for im in listing.images
        ]
    )
    start = time.perf_counter()
    TextureSynthesizer(config)(crops, [job.image_seed(0, im.key) for im in listing.images])
    bare = len(listing.images) / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as out:
        summary = job.run(
            job.JobConfig(out=Path(out), synthesis=config, shard_size=5),
            listing,
            show_progress=False,
        )
    end_to_end = summary.textures_per_second
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"device: {device}; {len(listing.images)} embedded photos; steps {config.steps}; 2 shards of 5"
    )
    print(f"bare synthesiser (in-process, one batch): {bare:.3f} textures/s")
    print(
        f"job end to end (Ray start-up included):   {end_to_end:.3f} textures/s "
        f"({summary.textures_written} textures in {summary.seconds:.1f} s)"
    )
    print(f"ratio job / bare: {end_to_end / bare:.2f}")
    if json_path:
        atomic_write_json(
            json_path,
            {
                "device": device,
                "images": len(listing.images),
                "steps": list(config.steps),
                "bare_textures_per_s": bare,
                "job_textures_per_s": end_to_end,
                "job_seconds": summary.seconds,
                "job_over_bare": end_to_end / bare,
            },
        )


if __name__ == "__main__":
    main()
