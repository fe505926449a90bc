"""The synthesis actor pool, planned from each node's own resources. Nothing here imports Ray.

A Ray actor lives on one node, so the pool is sized node by node (a request sized to the
whole cluster may fit no node and wait for ever):

* **GPU nodes**: one actor per GPU, each with its share of that node's CPUs (decoding,
  cropping, PNG encoding) — 8 GPUs and 64 CPUs: 8 actors of 1 GPU + 8 CPUs.
* **CPU nodes** (a cluster with no GPU at all): as many actors as the node's CPUs allow at
  ``CPU_THREADS_PER_ACTOR`` threads each (torch's intra-op threads follow the actor's CPUs);
  a node with fewer CPUs gets one actor with all of them.
* **Mixed** clusters: the GPU nodes only, unless ``cpu_nodes`` — a CPU actor is two orders of
  magnitude slower and would hold the last shards long after the GPUs are done.

``workers`` caps the pool (actors spread over the nodes in turn) or, when larger than the
plan, is met by giving each actor fewer CPUs; ``cpus_per_worker`` / ``gpus_per_worker`` fix
every actor's shape. A request that no node can host is a ``PoolRequestError`` naming the
request and the largest node, raised before anything is started.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Threads (CPUs) of one actor on a CPU node when nothing is asked for.
CPU_THREADS_PER_ACTOR = 4


class PoolRequestError(ValueError):
    """No node can host the actors asked for."""


@dataclass(frozen=True)
class NodeResources:
    node_id: str
    host: str
    cpus: float
    gpus: float

    def describe(self) -> str:
        return f"{self.host} ({_shape(self.cpus, self.gpus)})"


@dataclass(frozen=True)
class ActorSlot:
    """One actor to start: where it should go and what it holds."""

    node_id: str
    host: str
    cpus: float
    gpus: float

    @property
    def threads(self) -> int:
        """Torch intra-op and host threads of the actor: its whole CPUs, at least one."""
        return max(1, int(self.cpus))


def _shape(cpus: float, gpus: float) -> str:
    text = f"{cpus:g} CPU"
    return text + (f" + {gpus:g} GPU" if gpus else "")


def nodes_from_ray(nodes: list[dict[str, Any]]) -> list[NodeResources]:
    """The live nodes of ``ray.nodes()`` with their CPUs and GPUs."""
    return [
        NodeResources(
            node_id=n["NodeID"],
            host=n.get("NodeManagerHostname") or n.get("NodeManagerAddress", "?"),
            cpus=float(n.get("Resources", {}).get("CPU", 0)),
            gpus=float(n.get("Resources", {}).get("GPU", 0)),
        )
        for n in nodes
        if n.get("Alive")
    ]


def _fits(node: NodeResources, cpus: float, gpus: float) -> int:
    """How many actors of (cpus, gpus) the node holds."""
    counts = []
    if cpus:
        counts.append(math.floor(node.cpus / cpus + 1e-9))
    if gpus:
        counts.append(math.floor(node.gpus / gpus + 1e-9))
    return min(counts) if counts else 0


def _default_slots(node: NodeResources, use_gpus: bool) -> list[ActorSlot]:
    if use_gpus:
        gpus = int(node.gpus)
        if gpus < 1:
            return []
        share = node.cpus // gpus if node.cpus >= gpus else node.cpus / gpus
        return [ActorSlot(node.node_id, node.host, share, 1.0) for _ in range(gpus)]
    if node.cpus < 1:
        return []
    actors = max(1, int(node.cpus // CPU_THREADS_PER_ACTOR))
    base, extra = divmod(int(node.cpus), actors)  # the node's CPUs spread over its actors
    return [
        ActorSlot(node.node_id, node.host, float(base + (i < extra)), 0.0) for i in range(actors)
    ]


def _interleave(per_node: list[list[ActorSlot]], limit: int | None) -> list[ActorSlot]:
    """Slots taken one node at a time, so a capped pool spreads over the nodes."""
    out: list[ActorSlot] = []
    depth = max((len(s) for s in per_node), default=0)
    for i in range(depth):
        out.extend(slots[i] for slots in per_node if i < len(slots))
    return out if limit is None else out[:limit]


def plan_pool(
    nodes: list[NodeResources],
    workers: int | None = None,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float | None = None,
    cpu_nodes: bool = False,
) -> list[ActorSlot]:
    """The actors to start on ``nodes`` (see the module's rules); PoolRequestError when none fits."""
    if workers is not None and workers < 1:
        raise PoolRequestError(f"--workers must be at least 1, got {workers}")
    for name, value in (
        ("--cpus-per-worker", cpus_per_worker),
        ("--gpus-per-worker", gpus_per_worker),
    ):
        if value is not None and value < 0:
            raise PoolRequestError(f"{name} must not be negative, got {value:g}")
    if not nodes:
        raise PoolRequestError("the Ray cluster has no live node")
    largest = max(nodes, key=lambda n: (n.gpus, n.cpus))
    has_gpus = any(n.gpus >= 1 for n in nodes)
    explicit = cpus_per_worker is not None or gpus_per_worker is not None
    if explicit:
        gpus = gpus_per_worker if gpus_per_worker is not None else (1.0 if has_gpus else 0.0)
        cpus = cpus_per_worker if cpus_per_worker is not None else 1.0
        if not cpus and not gpus:
            raise PoolRequestError("an actor needs some CPU or GPU: both per-worker options are 0")
        per_node = [
            [ActorSlot(n.node_id, n.host, cpus, gpus)] * _fits(n, cpus, gpus) for n in nodes
        ]
        if not any(per_node):
            raise PoolRequestError(
                f"no node can host one actor of {_shape(cpus, gpus)}: the largest node is "
                f"{largest.describe()}. Ask for less (--cpus-per-worker, --gpus-per-worker)."
            )
        slots = _interleave(per_node, workers)
        if workers is not None and workers > len(slots):
            raise PoolRequestError(
                f"--workers {workers} of {_shape(cpus, gpus)} each: the cluster holds {len(slots)} "
                f"(largest node {largest.describe()}). Ask for fewer or smaller actors."
            )
        return slots
    use_gpus = has_gpus
    per_node = [_default_slots(n, use_gpus) for n in nodes]
    if use_gpus and cpu_nodes:
        per_node += [_default_slots(n, False) for n in nodes if n.gpus < 1]
    slots = _interleave(per_node, workers)
    if not slots:
        raise PoolRequestError(
            f"no node has a whole CPU or GPU for an actor: the largest node is {largest.describe()}"
        )
    if workers is not None and workers > len(slots):
        if use_gpus:
            raise PoolRequestError(
                f"--workers {workers}: the cluster has {len(slots)} GPUs (largest node "
                f"{largest.describe()}); share them with --gpus-per-worker (e.g. 0.5)"
            )
        cpus = math.floor(sum(n.cpus for n in nodes))  # one CPU per actor at the least
        if workers > cpus:
            raise PoolRequestError(
                f"--workers {workers}: the cluster has {cpus} CPUs (largest node "
                f"{largest.describe()}); ask for at most {cpus}, or a fraction of a CPU each "
                "with --cpus-per-worker"
            )
        return _spread_cpus(nodes, workers)
    return slots


def _spread_cpus(nodes: list[NodeResources], workers: int) -> list[ActorSlot]:
    """``workers`` CPU actors over the nodes in proportion to their CPUs, each taking its share."""
    counts = [0] * len(nodes)
    for _ in range(workers):  # the node with the most CPUs per actor so far takes the next one
        free = [i for i, n in enumerate(nodes) if counts[i] + 1 <= n.cpus + 1e-9]
        best = max(free, key=lambda i: nodes[i].cpus / (counts[i] + 1))
        counts[best] += 1
    per_node = [
        [ActorSlot(n.node_id, n.host, float(int(n.cpus) // c), 0.0)] * c
        for n, c in zip(nodes, counts)
        if c
    ]
    return _interleave(per_node, None)


def describe_pool(slots: list[ActorSlot]) -> str:
    """``3 actors on 2 nodes (1 CPU + 1 GPU each)`` or with the shapes listed when they differ."""
    shapes = sorted({_shape(s.cpus, s.gpus) for s in slots})
    nodes = len({s.node_id for s in slots})
    each = f"{shapes[0]} each" if len(shapes) == 1 else ", ".join(shapes)
    return (
        f"{len(slots)} actor{'s' * (len(slots) != 1)} on {nodes} node{'s' * (nodes != 1)} ({each})"
    )
