"""Shards to live actors, lost actors replaced, never a wait without end.

The driver hands each pending shard to an idle actor that has started (its ``info`` came
back), one shard per actor at a time. When an actor dies — its process killed, its node
removed — the shard it held goes back to the queue for a live actor, and a replacement actor
with the same resources is started, preferably on the same node, anywhere it fits otherwise.
A shard is written under a temporary name and renamed only when complete, so a lost actor
leaves no partial shard, and each shard is handed out once at a time, so none is written twice
into the set.

Bounds: a shard whose actor died ``MAX_SHARD_ATTEMPTS`` times is reported failed (rerun to
retry it), each planned actor is replaced at most ``MAX_REPLACEMENTS`` times, and when shards
are left but no actor has been running for ``actor_wait_s`` seconds (none can be placed), the
job stops with ``NoActorAvailable``; finished shards are kept for the rerun.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nsneg.pipeline.actors import start_progress, start_worker
from nsneg.pipeline.pool_plan import ActorSlot
from nsneg.pipeline.shards import ShardSpec

MAX_SHARD_ATTEMPTS = 4
MAX_REPLACEMENTS = 3


class NoActorAvailable(RuntimeError):
    pass


@dataclass
class Member:
    """One actor of the pool: its planned slot, its handle, and once started, where it runs."""

    index: int
    slot: ActorSlot
    handle: Any
    ready: Any  # the ObjectRef of its ``info`` call
    replacements: int = 0
    info: dict[str, Any] | None = None


@dataclass
class PoolUse:
    """What the pool did: actors and nodes that ran, actors lost, shards failed."""

    actors: set[tuple[int, int]] = field(default_factory=set)  # (index, replacement) that started
    nodes: set[str] = field(default_factory=set)
    lost: int = 0
    failed: list[str] = field(default_factory=list)


def _first_line(error: BaseException) -> str:
    """The error's first line; for a task's own exception, that exception's (not Ray's banner)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def run_shards(
    config,
    slots: list[ActorSlot],
    pending: list[ShardSpec],
    on_record: Callable[[dict[str, Any]], None],
    on_progress: Callable[[int, dict[int, float], int, int], None],
    progress_name: str,
    actor_wait_s: float,
    poll_s: float = 0.5,
) -> PoolUse:
    """Make every shard of ``pending`` on actors of ``slots``; ``on_record(record)`` per finished
    shard, ``on_progress(images, textures/s by worker, live actors, live nodes)`` about twice a
    second. Raises ``NoActorAvailable`` as described in the module."""
    import ray

    progress = start_progress(progress_name)
    use = PoolUse()
    starting: dict[Any, Member] = {}
    idle: list[Member] = []
    inflight: dict[Any, tuple[Member, ShardSpec]] = {}
    queue = collections.deque(pending)
    attempts: collections.Counter[int] = collections.Counter()
    last_loss = ""

    def start(index: int, slot: ActorSlot, replacements: int = 0) -> None:
        handle = start_worker(config, slot, progress_name, index)
        member = Member(index, slot, handle, handle.info.remote(), replacements)
        starting[member.ready] = member

    def replace(member: Member) -> None:
        ray.kill(member.handle, no_restart=True)
        use.lost += 1
        if member.replacements < MAX_REPLACEMENTS:
            start(member.index, member.slot, member.replacements + 1)

    for index, slot in enumerate(slots):
        start(index, slot)
    no_actor_since = time.monotonic()
    try:
        while queue or inflight:
            while queue and idle:
                member, spec = idle.pop(0), queue.popleft()
                inflight[member.handle.process.remote(spec)] = (member, spec)
            refs = [*inflight, *starting]
            if refs:
                done, _ = ray.wait(refs, num_returns=1, timeout=poll_s)
            else:
                done = []
            for ref in done:
                if ref in starting:
                    member = starting.pop(ref)
                    try:
                        member.info = ray.get(ref)
                    except ray.exceptions.RayError as e:  # died while starting
                        last_loss = _first_line(e)
                        replace(member)
                        continue
                    use.actors.add((member.index, member.replacements))
                    use.nodes.add(member.info["id"])
                    idle.append(member)
                    continue
                member, spec = inflight.pop(ref)
                try:
                    record = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # the shard itself failed
                    use.failed.append(f"{spec.path}: {_first_line(e)}")
                    idle.append(member)
                    continue
                except ray.exceptions.RayError as e:  # the actor (or its node) is gone
                    last_loss = _first_line(e)
                    attempts[spec.index] += 1
                    if attempts[spec.index] >= MAX_SHARD_ATTEMPTS:
                        use.failed.append(
                            f"{spec.path}: its actor died {attempts[spec.index]} times ({last_loss})"
                        )
                    else:
                        queue.appendleft(spec)
                    replace(member)
                    continue
                idle.append(member)
                on_record(record)
            live = idle + [m for m, _ in inflight.values()]
            images, rates = 0, {}
            if progress is not None:
                try:
                    images, rates = ray.get(progress.take.remote(), timeout=10)
                except ray.exceptions.GetTimeoutError:
                    pass
                except ray.exceptions.RayError:  # the bar loses its counts, the job goes on
                    progress = None
            on_progress(images, rates, len(live), len({m.info["id"] for m in live}))
            if live or not queue:
                no_actor_since = time.monotonic()
            elif not starting or time.monotonic() - no_actor_since > actor_wait_s:
                why = (
                    f"none could be placed for {actor_wait_s:g} s"
                    if starting
                    else "every actor was lost and replaced too often"
                )
                raise NoActorAvailable(
                    f"no synthesis actor is running ({why}; last loss: {last_loss or 'none'}): "
                    f"{len(queue)} shards are left, the finished ones are kept. Rerun the same "
                    "command when the cluster has room for the actors."
                )
    finally:
        for member in [*starting.values(), *idle, *(m for m, _ in inflight.values())]:
            ray.kill(member.handle, no_restart=True)
        if progress is not None:
            ray.kill(progress, no_restart=True)
    return use
