"""The Ray job: source listing -> fixed shards -> one Ray task per shard -> manifest.

Each shard is one task on a long-lived ``TextureWorker`` actor (``nsneg.pipeline.actors``)
that keeps its encoder loaded; the pool is planned from each node's own resources (one actor
per GPU on GPU nodes, CPU actors sized to the node otherwise: ``nsneg.pipeline.pool_plan``).
Within a shard, decoding the next batch and writing the previous one overlap the synthesis of
the current one. A shard is written under a temporary name and renamed only when complete
(``ShardWriter``), so a rerun skips finished shards and a killed job loses at most
the shards in flight; a lost actor's shard goes to a live actor (``nsneg.pipeline.dispatch``).
Bad images are skipped with a reason and counted against a threshold.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nsneg.datasets_manifest.format.constants import CROP_SIZE, TEXTURE_SIZE
from nsneg.datasets_manifest.format.image_decode import BadImage
from nsneg.datasets_manifest.format.shard_writer import (
    ShardWriter,
    drop_temporaries,
    encode_sample,
)
from nsneg.datasets_manifest.format.skip_log import DEFAULT_MAX_SKIP_FRACTION, check_fraction
from nsneg.pipeline import dispatch, pool_plan, shards
from nsneg.pipeline.images import RESIZE_SHORT, Crops, make_crops
from nsneg.pipeline.pool_plan import ActorSlot
from nsneg.pipeline.shards import ShardSpec, finished_record
from nsneg.pipeline.shards import plan_shards as plan
from nsneg.pipeline.sources import Listing, SourceImage
from nsneg.pipeline.synthesis import SynthesisConfig, auto_batch_size

#: How long shards may wait with no actor running (none placeable) before the job stops.
ACTOR_WAIT_S = 300.0
#: What a build stopped by too many unusable images says after the counts.
SKIPS_DETAIL = (
    "the input looks broken. Finished shards are kept; see their records/*.tar.json for the "
    "reasons, fix the input, then rerun to resume"
)


@dataclass(frozen=True)
class JobConfig:
    out: Path
    split: str = "train"
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    seed: int = 0
    shard_size: int = 1000
    include_source: bool = True
    resize_short: int = RESIZE_SHORT
    max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION
    workers: int | None = None  # actors; None: planned from the nodes (pool_plan)
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None
    cpu_nodes: bool = False  # CPU-only nodes too in a cluster that has GPUs
    device: str | None = None  # synthesis device; None: the actor's GPU if it holds one, else CPU
    actor_wait_s: float = ACTOR_WAIT_S

    def generator_config(self) -> dict[str, Any]:
        """Everything that determines a shard's content; recorded in the manifest."""
        return {
            "synthesis": self.synthesis.as_dict(),
            "seed": self.seed,
            "shard_size": self.shard_size,
            "include_source": self.include_source,
            "resize_short": self.resize_short,
            "crop_size": CROP_SIZE,
            "texture_size": TEXTURE_SIZE,
        }


@dataclass
class JobSummary:
    images: int
    shards: int
    shards_written: int
    textures_written: int
    skipped: list[dict[str, str]]
    failed_shards: list[str]
    seconds: float
    out: Path
    pool: str = ""  # the planned pool, e.g. "2 actors on 2 nodes (1 CPU each)"
    actors_started: int = 0
    nodes_used: int = 0
    actors_lost: int = 0

    @property
    def textures_per_second(self) -> float:
        return self.textures_written / max(self.seconds, 1e-9)


def image_seed(global_seed: int, key: str) -> int:
    """Per-image seed from (global seed, key): the same image gets the same crops and texture."""
    return (
        int.from_bytes(hashlib.sha256(f"{global_seed}:{key}".encode()).digest()[:8], "little") >> 1
    )


def plan_shards(listing: Listing, config: JobConfig) -> list[ShardSpec]:
    return plan(
        listing.images, config.out, config.split, config.shard_size, config.generator_config()
    )


def _sample_meta(
    image: SourceImage, crops: Crops, seed: int, loss: float, config: JobConfig
) -> dict[str, Any]:
    return {
        "key": image.key,
        "wnid": image.wnid,
        "source_path": image.relpath,  # below the --imagenet root: no private path leaves this machine
        "source_name": Path(image.path).name,
        "source_format": crops.source_format,
        "resized_size": list(crops.resized_size),
        "crop_boxes": {"center": list(crops.boxes[0]), "random": list(crops.boxes[1])},
        "conversions": crops.conversions,
        "seed": seed,
        "encoder": config.synthesis.encoder,
        "sizes": list(config.synthesis.sizes),
        "steps": list(config.synthesis.steps),
        "loss": round(float(loss), 6),
        "generator_version": config.synthesis.as_dict()["version"],
    }


def _prepare_image(image: SourceImage, config: JobConfig) -> tuple | dict[str, str]:
    """Host side of one image: read, decode, crop. (image, seed, bytes, crops), or a skip record."""
    seed = image_seed(config.seed, image.key)
    try:
        data = Path(image.path).read_bytes()
        crops = make_crops(data, np.random.default_rng(seed), config.resize_short)
    except BadImage as e:
        return {"path": image.relpath, "key": image.key, "reason": e.reason}
    except OSError as e:
        return {"path": image.relpath, "key": image.key, "reason": f"cannot read: {e}"}
    return image, seed, data, crops


def _encode_sample(
    prepared: tuple, texture: np.ndarray, loss: float, config: JobConfig
) -> dict[str, Any]:
    image, seed, data, crops = prepared
    meta = _sample_meta(image, crops, seed, loss, config)
    source = data if config.include_source else None
    return encode_sample(image.key, texture, image.cls, meta, source)


def write_shard(
    synthesize,
    spec: ShardSpec,
    config: JobConfig,
    report=lambda images, textures: None,
    batch_size: int | None = None,
    host_threads: int = 1,
    node: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Make one shard: crops -> batched synthesis -> samples -> atomic commit. Returns its record.

    ``synthesize`` is a ``TextureSynthesizer`` (or anything with its call signature);
    ``report(images, textures)`` is told after every batch how many images were handled and
    how many textures they gave. Three stages overlap, so the device waits for neither host
    stage: while batch k is synthesised, batch k+1 is decoded and cropped and batch k-1 is
    PNG-encoded and appended to the shard, each on ``host_threads`` threads, in order (the
    bytes do not depend on the threading). ``batch_size`` defaults to the config's (or the
    CPU default). ``node`` (the writing node's id and host) goes into the shard's record.
    """
    from concurrent.futures import ThreadPoolExecutor

    size = (
        batch_size
        or config.synthesis.batch_size
        or auto_batch_size(config.synthesis.encoder, "cpu")
    )
    batches = [spec.images[start : start + size] for start in range(0, len(spec.images), size)]
    writer = ShardWriter(Path(spec.path))
    skipped: list[dict[str, str]] = []

    def prepare(batch: list[SourceImage]) -> list:
        return list(host.map(lambda image: _prepare_image(image, config), batch))

    def write(ready: list, result) -> None:
        for sample in host.map(
            lambda args: _encode_sample(*args, config), zip(ready, result.textures, result.losses)
        ):
            writer.write(sample)

    try:
        with (
            ThreadPoolExecutor(max(1, host_threads), "nsneg-host") as host,
            ThreadPoolExecutor(2, "nsneg-stage") as stage,
        ):
            next_batch = stage.submit(prepare, batches[0]) if batches else None
            written = None
            for k, batch in enumerate(batches):
                outcomes = next_batch.result()
                if k + 1 < len(batches):
                    next_batch = stage.submit(prepare, batches[k + 1])
                skipped.extend(o for o in outcomes if isinstance(o, dict))
                ready = [o for o in outcomes if not isinstance(o, dict)]
                if ready:
                    result = synthesize(
                        np.stack([c.pixels for _, _, _, c in ready]), [s for _, s, _, _ in ready]
                    )
                    if written is not None:
                        written.result()  # one batch in the writer at a time: order kept, errors raised here
                    written = stage.submit(write, ready, result)
                report(len(batch), len(ready))
            if written is not None:
                written.result()
        extra = {"fingerprint": spec.fingerprint, "skipped": skipped, "index": spec.index}
        return writer.commit({**extra, "node": node} if node else extra)
    except BaseException:
        writer.abort()
        raise


def _init_ray(num_cpus: int | None = None, *, verbose: bool = False) -> None:
    """Start a local Ray instance, or join the cluster at ``RAY_ADDRESS``. Ray's own messages
    (start-up, the cluster's security notices, the workers' output) reach the terminal only when
    ``verbose``; Ray's settings, authentication included, are the same either way."""
    import logging

    import ray

    if ray.is_initialized():
        return
    quiet = dict(logging_level=logging.INFO if verbose else logging.ERROR, log_to_driver=verbose)
    if os.environ.get("RAY_ADDRESS"):
        # Joining a cluster: ship this package to workers on other machines, importable there
        # under the same name as here (``nsneg.pipeline``).
        ray.init(runtime_env={"py_modules": [str(_namespace_for_workers())]}, **quiet)
    else:
        # address="local": a Ray instance of its own. Without it ray.init joins any cluster it
        # finds on the machine (/tmp/ray), e.g. another user's, whose shutdown kills this job.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)


def _namespace_for_workers() -> Path:
    """A temporary ``nsneg/`` folder holding a copy of this package and of the shard-set format
    it writes (``nsneg.datasets_manifest.format``), for Ray's ``py_modules``.

    Ray makes a shipped folder importable by its own name; the installed packages' folders are
    ``pipeline/`` and ``datasets_manifest/`` (an editable install maps them), so they are copied
    under ``nsneg/``."""
    import shutil
    import tempfile

    import nsneg.datasets_manifest.format as shard_format

    ignore = shutil.ignore_patterns("__pycache__")
    root = Path(tempfile.mkdtemp(prefix="nsneg-ray-")) / "nsneg"
    shutil.copytree(Path(__file__).resolve().parent, root / "pipeline", ignore=ignore)
    format_dir = Path(shard_format.__file__).resolve().parent
    shutil.copytree(format_dir, root / "datasets_manifest" / "format", ignore=ignore)
    shutil.copy(format_dir.parent / "__init__.py", root / "datasets_manifest" / "__init__.py")
    return root


def run(
    config: JobConfig, listing: Listing, *, show_progress: bool = True, verbose: bool = False
) -> JobSummary:
    """Make (or finish making) the shard set for ``listing`` under ``config.out``; ``verbose``:
    Ray's own messages too."""
    from tqdm import tqdm

    start = time.time()
    if not listing.images:
        raise ValueError("no source images to process")
    split_dir = Path(config.out) / config.split
    split_dir.mkdir(parents=True, exist_ok=True)
    specs = plan_shards(listing, config)
    records: dict[int, dict[str, Any]] = {}
    for spec in specs:
        if (record := finished_record(spec)) is not None:
            records[spec.index] = record
    pending = [s for s in specs if s.index not in records]
    done_images = sum(len(specs[i].images) for i in records)
    written, use, pool = 0, None, ""
    bar = tqdm(
        total=len(listing.images),
        initial=done_images,
        unit="img",
        desc="textures",
        disable=not show_progress,
    )
    try:
        if pending:
            written, use, pool = _run_pending(
                config, pending, records, bar, len(listing.images), verbose
            )
    finally:  # whatever happened, the manifest lists exactly the shards that are finished
        bar.close()
        for spec in pending:  # the actors are gone: what they left unfinished is no shard
            if spec.index not in records:
                drop_temporaries(Path(spec.path))
        _write_manifest(config, listing, specs, records)
    skipped = [s for i in sorted(records) for s in records[i]["skipped"]]
    return JobSummary(
        images=len(listing.images),
        shards=len(specs),
        shards_written=len(pending) - len(use.failed if use else []),
        textures_written=written,
        skipped=skipped,
        failed_shards=use.failed if use else [],
        seconds=time.time() - start,
        out=Path(config.out),
        pool=pool,
        actors_started=len(use.actors) if use else 0,
        nodes_used=len(use.nodes) if use else 0,
        actors_lost=use.lost if use else 0,
    )


def plan_pool(config: JobConfig, shards: int) -> list[ActorSlot]:
    """The actors for ``shards`` pending shards on the Ray cluster this process is connected to
    (at most one per shard); ``PoolRequestError`` when no node can host them."""
    import ray

    slots = pool_plan.plan_pool(
        pool_plan.nodes_from_ray(ray.nodes()),
        workers=config.workers,
        cpus_per_worker=config.cpus_per_worker,
        gpus_per_worker=config.gpus_per_worker,
        cpu_nodes=config.cpu_nodes,
    )
    return slots[:shards]


def _run_pending(
    config, pending, records, bar, total_images, verbose: bool = False
) -> tuple[int, dispatch.PoolUse, str]:
    """(textures written, what the pool did, the pool's description)."""
    _init_ray(verbose=verbose)
    slots = plan_pool(config, len(pending))
    pool = pool_plan.describe_pool(slots)
    if not bar.disable:
        bar.write(f"pool: {pool}")
    written = 0
    skipped_total = sum(len(r["skipped"]) for r in records.values())

    def on_record(record: dict[str, Any]) -> None:
        nonlocal written, skipped_total
        records[record["index"]] = record
        written += record["samples"]
        skipped_total += len(record["skipped"])
        check_fraction(skipped_total, total_images, config.max_skip_fraction, SKIPS_DETAIL)

    def on_progress(images: int, rates: dict[int, float], actors: int, nodes: int) -> None:
        if images:
            bar.update(images)
        postfix = _progress_postfix(skipped_total, len(records), rates)
        bar.set_postfix_str(
            f"actors={actors}/{len(slots)}, nodes={nodes}, {postfix}", refresh=False
        )

    use = dispatch.run_shards(
        config,
        slots,
        pending,
        on_record,
        on_progress,
        progress_name=f"nsneg-progress-{os.getpid()}-{time.time_ns()}",
        actor_wait_s=config.actor_wait_s,
    )
    return written, use, pool


def _progress_postfix(skipped: int, shards: int, rates: dict[int, float]) -> str:
    """The bar's tail: e.g. ``skipped=0, shards=3, textures/s w0=41.2 w1=39.8`` (3 significant digits)."""
    per_worker = " ".join(f"w{w}={r:.3g}" for w, r in rates.items())
    return f"skipped={skipped}, shards={shards}" + (
        f", textures/s {per_worker}" if per_worker else ""
    )


def _write_manifest(config: JobConfig, listing: Listing, specs, records) -> None:
    """This split's finished shards into the manifest (other splits kept)."""
    ordered = [records[s.index] for s in specs if s.index in records]
    split_info = {
        "shards": ordered,
        "skipped": [s for r in ordered for s in r["skipped"]],
        "complete": len(ordered) == len(specs),
    }
    shards.merge_split(
        config.out,
        listing.classes,
        config.generator_config(),
        config.include_source,
        config.split,
        split_info,
    )
