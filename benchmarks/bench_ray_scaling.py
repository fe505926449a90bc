"""Scaling of the Ray job: textures/s with 1 vs 2 actors and 1 vs 2 nodes, as ratios in one run.

Four pools over the same images (the embedded photos, each twice under another name; one
shard per image), each job on a fresh Ray instance that is already up when the clock starts
(the actors' start, encoder loading, decoding, PNG encoding and hashing are included):

* ``1 node, 1 actor x 1 CPU`` — the unit;
* ``1 node, 2 actors x 1 CPU`` — two actors on one node;
* ``1 node, 1 actor x 2 CPUs`` — the same CPUs as torch intra-op threads of one actor;
* ``2 nodes x 1 CPU, 1 actor each`` — a ``ray.cluster_utils.Cluster`` of two raylets on this
  machine (the default plan on such a cluster).

    python benchmarks/bench_ray_scaling.py [--steps 120,40,14] [--json FILE]
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import click

from nsneg.datasets_manifest.format.files import atomic_write_json
from nsneg.pipeline import job
from nsneg.pipeline.sources import embedded_listing, folder_listing
from nsneg.pipeline.synthesis import SynthesisConfig


def doubled_tree(root: Path) -> Path:
    """An ImageFolder tree holding every embedded photo twice (20 images)."""
    for im in embedded_listing().images:
        folder = root / "train" / im.wnid
        folder.mkdir(parents=True, exist_ok=True)
        for copy in (0, 1):
            shutil.copyfile(im.path, folder / f"{copy}-{Path(im.path).name}")
    return root


def timed_job(config: job.JobConfig, listing) -> dict[str, float]:
    start = time.perf_counter()
    summary = job.run(config, listing, show_progress=False)
    seconds = time.perf_counter() - start
    return {
        "textures": summary.textures_written,
        "seconds": round(seconds, 2),
        "textures_per_s": round(summary.textures_written / seconds, 4),
        "actors": summary.actors_started,
        "nodes": summary.nodes_used,
    }


def local(num_cpus: int, config: job.JobConfig, listing) -> dict[str, float]:
    import ray

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        return timed_job(config, listing)
    finally:
        ray.shutdown()


def two_nodes(config: job.JobConfig, listing) -> dict[str, float]:
    import ray
    from ray.cluster_utils import Cluster

    # a private RAY_TMPDIR: a Cluster records its address where any other ray.init() on this
    # machine would find it and join it
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="nsneg-ray-")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        return timed_job(config, listing)
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(os.environ.pop("RAY_TMPDIR"), ignore_errors=True)


@click.command()
@click.option("--steps", default="120,40,14", show_default=True, help="Adam steps per resolution")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(steps: str, json_path: Path | None) -> None:
    synthesis = SynthesisConfig(steps=tuple(int(s) for s in steps.split(",")), batch_size=1)
    with tempfile.TemporaryDirectory() as tmp:
        listing = folder_listing(doubled_tree(Path(tmp) / "tree"), "train")
        base = job.JobConfig(out=Path(tmp), synthesis=synthesis, shard_size=1)

        def fresh(name: str, **pool) -> job.JobConfig:
            return replace(base, out=Path(tmp) / name, **pool)

        runs = {
            "1_node_1_actor_1_cpu": local(2, fresh("a", workers=1, cpus_per_worker=1), listing),
            "1_node_2_actors_1_cpu": local(2, fresh("b", workers=2, cpus_per_worker=1), listing),
            "1_node_1_actor_2_cpus": local(2, fresh("c", workers=1, cpus_per_worker=2), listing),
            "2_nodes_1_actor_1_cpu_each": two_nodes(fresh("d"), listing),
        }
    unit = runs["1_node_1_actor_1_cpu"]["textures_per_s"]
    ratios = {
        "2_actors_over_1_actor": runs["1_node_2_actors_1_cpu"]["textures_per_s"] / unit,
        "1_actor_2_cpus_over_1_actor_1_cpu": runs["1_node_1_actor_2_cpus"]["textures_per_s"] / unit,
        "2_nodes_over_1_node_1_actor": runs["2_nodes_1_actor_1_cpu_each"]["textures_per_s"] / unit,
        "2_nodes_over_1_node_2_actors": runs["2_nodes_1_actor_1_cpu_each"]["textures_per_s"]
        / runs["1_node_2_actors_1_cpu"]["textures_per_s"],
    }
    print(
        f"{len(listing.images)} images, one shard each; steps {synthesis.steps}; {os.cpu_count()} CPUs"
    )
    for name, run in runs.items():
        print(
            f"{name:30s} {run['textures_per_s']:.3f} textures/s ({run['textures']} in "
            f"{run['seconds']:.1f} s; {run['actors']} actors on {run['nodes']} nodes)"
        )
    for name, ratio in ratios.items():
        print(f"{name:36s} {ratio:.2f}")
    if json_path:
        atomic_write_json(
            json_path,
            {
                "images": len(listing.images),
                "steps": list(synthesis.steps),
                "runs": runs,
                "ratios": {k: round(v, 3) for k, v in ratios.items()},
            },
        )


if __name__ == "__main__":
    main()
