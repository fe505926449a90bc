"""The actor pool planned from each node's resources (no Ray started: nodes as ``ray.nodes()`` gives them)."""

import re

import pytest

from nsneg.pipeline.pool_plan import (
    ActorSlot,
    NodeResources,
    PoolRequestError,
    describe_pool,
    nodes_from_ray,
    plan_pool,
)


def node(name: str, cpus: float, gpus: float = 0) -> NodeResources:
    return NodeResources(name, name, cpus, gpus)


def shapes(slots: list[ActorSlot]) -> list[tuple[str, float, float]]:
    return [(s.node_id, s.cpus, s.gpus) for s in slots]


def test_nodes_come_from_ray_nodes_alive_only():
    raw = [
        {
            "NodeID": "a",
            "Alive": True,
            "NodeManagerHostname": "h1",
            "Resources": {"CPU": 8.0, "GPU": 2.0},
        },
        {"NodeID": "b", "Alive": False, "NodeManagerHostname": "h2", "Resources": {"CPU": 8.0}},
        {"NodeID": "c", "Alive": True, "NodeManagerHostname": "h3", "Resources": {"memory": 1.0}},
    ]
    assert nodes_from_ray(raw) == [NodeResources("a", "h1", 8, 2), NodeResources("c", "h3", 0, 0)]


def test_cpu_nodes_get_actors_sized_to_their_own_cpus():
    # two 1-CPU nodes: one actor each, never one actor asking for the cluster's 2 CPUs
    assert shapes(plan_pool([node("a", 1), node("b", 1)])) == [("a", 1, 0), ("b", 1, 0)]
    # 16 CPUs: four actors of four threads; 6 CPUs: one actor of all six; 2 CPUs: one of two
    assert shapes(plan_pool([node("a", 16)])) == [("a", 4, 0)] * 4
    assert shapes(plan_pool([node("a", 6)])) == [("a", 6, 0)]
    assert plan_pool([node("a", 2)])[0].threads == 2


def test_gpu_nodes_get_one_actor_per_gpu_with_the_nodes_cpu_share():
    slots = plan_pool([node("a", 64, 8), node("b", 3, 2)])
    assert sorted(shapes(slots)) == sorted([("a", 8, 1)] * 8 + [("b", 1, 1)] * 2)
    assert shapes(plan_pool([node("a", 1, 2)])) == [("a", 0.5, 1)] * 2  # fewer CPUs than GPUs
    assert plan_pool([node("a", 1, 2)])[0].threads == 1


def test_mixed_cluster_uses_gpu_nodes_unless_cpu_nodes_asked():
    nodes = [node("head", 8), node("g", 16, 2)]
    assert shapes(plan_pool(nodes)) == [("g", 8, 1)] * 2
    assert sorted(shapes(plan_pool(nodes, cpu_nodes=True))) == sorted(
        [("g", 8, 1)] * 2 + [("head", 4, 0)] * 2
    )


def test_workers_caps_the_pool_spread_over_nodes():
    slots = plan_pool([node("a", 8, 4), node("b", 8, 4)], workers=2)
    assert {s.node_id for s in slots} == {"a", "b"}


def test_more_workers_than_planned_on_cpus_share_the_cpus():
    slots = plan_pool([node("a", 8), node("b", 2)], workers=5)
    assert len(slots) == 5 and sum(s.cpus for s in slots if s.node_id == "a") <= 8
    assert all(s.cpus >= 1 for s in slots) and sum(s.node_id == "b" for s in slots) <= 2


def test_explicit_shape_fixes_every_actor():
    assert shapes(plan_pool([node("a", 4, 2)], gpus_per_worker=0.5)) == [("a", 1, 0.5)] * 4
    assert (
        shapes(plan_pool([node("a", 4, 2)], cpus_per_worker=2, gpus_per_worker=0))
        == [("a", 2, 0)] * 2
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(cpus_per_worker=2),
            "no node can host one actor of 2 CPU: the largest node is a (1 CPU)",
        ),
        (
            dict(gpus_per_worker=1),
            "no node can host one actor of 1 CPU + 1 GPU: the largest node is",
        ),
        (dict(workers=3), "--workers 3: the cluster has 2 CPUs"),
        (dict(workers=3, cpus_per_worker=1), "--workers 3 of 1 CPU each: the cluster holds 2"),
        (dict(workers=0), "--workers must be at least 1"),
    ],
)
def test_requests_no_node_can_host_are_refused_naming_the_largest_node(kwargs, message):
    with pytest.raises(
        PoolRequestError,
        match="^" + re.escape(message),
    ):
        plan_pool([node("a", 1), node("b", 1)], **kwargs)


def test_too_many_gpu_workers_point_to_sharing_gpus():
    with pytest.raises(PoolRequestError, match="--gpus-per-worker"):
        plan_pool([node("a", 8, 2)], workers=3)


def test_describe_pool():
    assert (
        describe_pool(plan_pool([node("a", 1), node("b", 1)])) == "2 actors on 2 nodes (1 CPU each)"
    )
    assert (
        describe_pool(plan_pool([node("a", 2, 2), node("b", 1, 1)]))
        == "3 actors on 2 nodes (1 CPU + 1 GPU each)"
    )
