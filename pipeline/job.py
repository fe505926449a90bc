"""The Ray job: source listing -> fixed shards -> one Ray task per shard -> manifest.

Each shard is one task on a long-lived ``TextureWorker`` actor that keeps its encoder
loaded (one actor per GPU where there are GPUs); within a shard, decoding the next batch and
writing the previous one overlap the synthesis of the current one. A shard is written under a temporary name and renamed only when complete
(``ShardWriter``), so a rerun skips finished shards and a killed job loses at
most the shards in flight. Actors are restarted and their tasks retried by Ray when a
worker dies; bad images are skipped with a reason and counted against a threshold.
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
from nsneg.datasets_manifest.format.shard_writer import ShardWriter, encode_sample
from nsneg.datasets_manifest.format.skip_log import DEFAULT_MAX_SKIP_FRACTION, check_fraction
from nsneg.pipeline import shards
from nsneg.pipeline.images import RESIZE_SHORT, Crops, make_crops
from nsneg.pipeline.shards import ShardSpec, finished_record
from nsneg.pipeline.shards import plan_shards as plan
from nsneg.pipeline.sources import Listing, SourceImage
from nsneg.pipeline.synthesis import SynthesisConfig, auto_batch_size

#: Ray fault tolerance, set deliberately (Ray's defaults: tasks retry 3 times, actors never restart).
MAX_ACTOR_RESTARTS = 3
MAX_TASK_RETRIES = 3
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
    workers: int | None = None

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
) -> dict[str, Any]:
    """Make one shard: crops -> batched synthesis -> samples -> atomic commit. Returns its record.

    ``synthesize`` is a ``TextureSynthesizer`` (or anything with its call signature);
    ``report(images, textures)`` is told after every batch how many images were handled and
    how many textures they gave. Three stages overlap, so the device waits for neither host
    stage: while batch k is synthesised, batch k+1 is decoded and cropped and batch k-1 is
    PNG-encoded and appended to the shard, each on ``host_threads`` threads, in order (the
    bytes do not depend on the threading). ``batch_size`` defaults to the config's (or the
    CPU default).
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
        return writer.commit(
            {"fingerprint": spec.fingerprint, "skipped": skipped, "index": spec.index}
        )
    except BaseException:
        writer.abort()
        raise


def _progress_class():
    import ray

    @ray.remote(num_cpus=0)
    class ProgressCounter:
        """Images handled by all workers since the driver last asked, and each worker's
        textures/s: feeds the live progress bar.

        Workers find it by name: an actor handle passed to a restartable actor's constructor
        lives in the object store, which Ray warns an actor restart cannot rely on.
        """

        def __init__(self) -> None:
            self.count = 0
            self.workers: dict[
                int, list[float]
            ] = {}  # worker -> [textures, first report, last report]

        def add(self, images: int, textures: int = 0, worker: int = 0) -> None:
            now = time.monotonic()
            self.count += images
            entry = self.workers.setdefault(worker, [0, now, now])
            entry[0] += textures
            entry[2] = now

        def take(self) -> tuple[int, dict[int, float]]:
            """(images since the last call, {worker: textures/s since its first report})."""
            n, self.count = self.count, 0
            rates = {
                w: t / (last - first)
                for w, (t, first, last) in sorted(self.workers.items())
                if last > first
            }
            return n, rates

    return ProgressCounter


def _worker_class():
    import ray

    @ray.remote(max_restarts=MAX_ACTOR_RESTARTS, max_task_retries=MAX_TASK_RETRIES)
    class TextureWorker:
        """Long-lived: loads the encoder once (on its GPU if it has one), then makes shard after shard."""

        def __init__(self, config: JobConfig, progress_name: str, index: int = 0):
            import torch

            from nsneg.pipeline.synthesis import TextureSynthesizer

            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if cpus:
                torch.set_num_threads(max(1, int(cpus)))
            self.host_threads = max(1, int(cpus or 1))
            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.config = config
            self.index = index
            self.progress = ray.get_actor(progress_name)
            self.synthesizer = TextureSynthesizer(config.synthesis, device=device)

        def pid(self) -> int:
            return os.getpid()

        def process(self, spec: ShardSpec) -> dict[str, Any]:
            self.progress.add.remote(
                0, 0, self.index
            )  # the clock of this worker's textures/s starts

            def report(images: int, textures: int) -> None:
                self.progress.add.remote(images, textures, self.index)

            return write_shard(
                self.synthesizer,
                spec,
                self.config,
                report=report,
                batch_size=self.synthesizer.batch_size,
                host_threads=self.host_threads,
            )

    return TextureWorker


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
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)


def _namespace_for_workers() -> Path:
    """A temporary ``nsneg/`` folder holding a copy of this package, for Ray's ``py_modules``.

    Ray makes a shipped folder importable by its own name; the installed package's folder is
    ``pipeline/`` (an editable install maps it), so it is copied under ``nsneg/pipeline``."""
    import shutil
    import tempfile

    here = Path(__file__).resolve().parent
    root = Path(tempfile.mkdtemp(prefix="nsneg-ray-")) / "nsneg"
    shutil.copytree(here, root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
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
    failed: list[str] = []
    written = 0
    bar = tqdm(
        total=len(listing.images),
        initial=done_images,
        unit="img",
        desc="textures",
        disable=not show_progress,
    )
    try:
        if pending:
            written, failed = _run_pending(
                config, pending, records, bar, len(listing.images), verbose
            )
    finally:  # whatever happened, the manifest lists exactly the shards that are finished
        bar.close()
        _write_manifest(config, listing, specs, records)
    skipped = [s for i in sorted(records) for s in records[i]["skipped"]]
    return JobSummary(
        images=len(listing.images),
        shards=len(specs),
        shards_written=len(pending) - len(failed),
        textures_written=written,
        skipped=skipped,
        failed_shards=failed,
        seconds=time.time() - start,
        out=Path(config.out),
    )


def _run_pending(
    config, pending, records, bar, total_images, verbose: bool = False
) -> tuple[int, list[str]]:
    import ray
    from ray.util.actor_pool import ActorPool

    _init_ray(verbose=verbose)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = config.workers or (gpus if gpus else 1)
    workers = min(workers, len(pending))
    # One actor per GPU; each gets its share of the CPUs (decoding, cropping, PNG encoding).
    options = {"num_cpus": max(1, cpus // workers)}
    if gpus:
        options["num_gpus"] = 1
    progress_name = f"nsneg-progress-{os.getpid()}-{time.time_ns()}"
    progress = _progress_class().options(name=progress_name).remote()
    worker_cls = _worker_class()
    pool = ActorPool(
        [worker_cls.options(**options).remote(config, progress_name, i) for i in range(workers)]
    )
    for spec in pending:
        pool.submit(lambda actor, s: actor.process.remote(s), spec)
    written, failed = 0, []
    skipped_total = sum(len(r["skipped"]) for r in records.values())
    while pool.has_next():
        try:
            record = pool.get_next_unordered(timeout=0.5)
        except TimeoutError:
            record = None
        except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as e:
            failed.append(str(e).splitlines()[0])
            record = None
        done_now, rates = ray.get(progress.take.remote())
        if done_now:
            bar.update(done_now)
        if record is not None:
            records[record["index"]] = record
            written += record["samples"]
            skipped_total += len(record["skipped"])
        bar.set_postfix_str(_progress_postfix(skipped_total, len(records), rates), refresh=False)
        if record is not None:
            check_fraction(skipped_total, total_images, config.max_skip_fraction, SKIPS_DETAIL)
    return written, failed


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
