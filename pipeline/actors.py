"""The job's Ray actors: ``TextureWorker`` (makes shards) and ``ProgressCounter`` (feeds the bar).

Ray is imported only when a class is asked for (``worker_class``, ``progress_class``), so the
rest of the package imports without it. Neither actor is restarted by Ray: a lost worker is
replaced by the dispatcher (``nsneg.pipeline.dispatch``), which also hands its shard to a live
one, since a restart pinned to a node that is gone could wait for ever.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from typing import Any

from nsneg.pipeline.pool_plan import ActorSlot


@functools.cache
def progress_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class ProgressCounter:
        """Images handled by all workers since the driver last asked, and each worker's
        textures/s. Workers find it by name (``ray.get_actor``)."""

        def __init__(self) -> None:
            self.count = 0
            # worker -> [textures, first report, last report]
            self.workers: dict[int, list[float]] = {}

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


def start_progress(name: str):
    """A ``ProgressCounter`` on the driver's own node (it lives as long as the driver does)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    strategy = NodeAffinitySchedulingStrategy(here, soft=False)
    return progress_class().options(name=name, scheduling_strategy=strategy).remote()


@functools.cache
def worker_class():
    import ray

    @ray.remote(max_restarts=0, max_task_retries=0)
    class TextureWorker:
        """Long-lived: loads the encoder once (on its GPU if it holds one), then makes shard
        after shard, with torch's intra-op threads and the host threads set to its CPUs."""

        def __init__(self, config, progress_name: str, index: int = 0, threads: int = 1):
            import torch

            from nsneg.pipeline.synthesis import TextureSynthesizer

            torch.set_num_threads(max(1, threads))
            self.host_threads = max(1, threads)
            self.config = config
            self.index = index
            try:
                self.progress = ray.get_actor(progress_name)
            except ValueError:  # the counter is gone: shards are made all the same, uncounted
                self.progress = None
            gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
            device = config.device or ("cuda" if gpu else "cpu")
            self.synthesizer = TextureSynthesizer(config.synthesis, device=device)
            self.node = {
                "id": ray.get_runtime_context().get_node_id(),
                "host": socket.gethostname(),
            }

        def info(self) -> dict[str, Any]:
            """Where this actor runs: pid, node, host and synthesis device."""
            return {**self.node, "pid": os.getpid(), "device": str(self.synthesizer.device)}

        def process(self, spec) -> dict[str, Any]:
            from nsneg.pipeline.job import write_shard

            def report(images: int, textures: int) -> None:
                if self.progress is not None:
                    self.progress.add.remote(images, textures, self.index)

            report(0, 0)  # this worker's textures/s clock starts

            return write_shard(
                self.synthesizer,
                spec,
                self.config,
                report=report,
                batch_size=self.synthesizer.batch_size,
                host_threads=self.host_threads,
                node=self.node,
            )

    return TextureWorker


def start_worker(config, slot: ActorSlot, progress_name: str, index: int):
    """A ``TextureWorker`` holding ``slot``'s resources, preferably on its node (elsewhere when
    that node is gone: a replacement goes wherever it fits)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options: dict[str, Any] = {
        "num_cpus": slot.cpus,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(slot.node_id, soft=True),
    }
    if slot.gpus:
        options["num_gpus"] = slot.gpus
    return worker_class().options(**options).remote(config, progress_name, index, slot.threads)
