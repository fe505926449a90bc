"""The texture job on real multi-node Ray clusters (``ray.cluster_utils.Cluster``: several raylets
on this machine), joined as a user would: ``RAY_ADDRESS=... nsneg-textures build``.

Every cluster is torn down by its fixture; every job runs under a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from nsneg.datasets_manifest.format.manifest import load_manifest, shard_paths, verify
from nsneg.datasets_manifest.format.naming import record_path
from nsneg.datasets_manifest.format.sample_reader import iter_samples
from nsneg.pipeline.sources import folder_listing
from nsneg_testing import make_tree, texture_build_cmd

pytestmark = pytest.mark.slow

JOB_TIMEOUT_S = 240


@contextlib.contextmanager
def ray_cluster(head: dict, *workers: dict):
    """A Cluster of a head node and worker nodes (``add_node`` arguments); shut down on exit.

    Its files live in a private temporary folder (``RAY_TMPDIR``): a Cluster records its address
    in ``$RAY_TMPDIR/ray/ray_current_cluster``, where any other ``ray.init()`` on this machine
    would find it and join it instead of starting its own instance."""
    from ray.cluster_utils import Cluster

    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="nsneg-ray-")  # short: socket paths
    try:
        cluster = Cluster(initialize_head=True, head_node_args=head)
        try:
            nodes = [cluster.add_node(**args) for args in workers]
            cluster.wait_for_nodes()
            yield cluster, nodes
        finally:
            cluster.shutdown()
    finally:
        shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)
        if saved is None:
            os.environ.pop("RAY_TMPDIR")
        else:
            os.environ["RAY_TMPDIR"] = saved


def run_build(cluster, tree: Path, out: Path, *extra: str, timeout: float = JOB_TIMEOUT_S):
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    return subprocess.run(
        texture_build_cmd(tree, out, *extra),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def records_by_node(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for shard in load_manifest(out)["splits"]["train"]["shards"]:
        counts[shard["node"]["id"]] = counts.get(shard["node"]["id"], 0) + 1
    return counts


def assert_complete_set(out: Path, tree: Path) -> None:
    """Every image of the tree exactly once, every shard whole (verified), no temporary file."""
    assert verify(out) == []
    keys = [s.key for s in iter_samples(out, "train")]
    assert sorted(keys) == sorted(im.key for im in folder_listing(tree, "train").images)
    assert not list((out / "train").glob(".*tmp*"))
    manifest = load_manifest(out)
    assert manifest["splits"]["train"]["complete"] is True


@pytest.fixture(scope="module")
def two_cpu_nodes():
    with ray_cluster({"num_cpus": 1}, {"num_cpus": 1}) as (cluster, _):
        yield cluster


def test_the_job_joins_a_two_node_cluster_and_writes_on_both(two_cpu_nodes, tmp_path):
    tree = make_tree(tmp_path / "tree", n_per_class=3, bad=False)
    out = tmp_path / "out"
    done = run_build(two_cpu_nodes, tree, out, "--steps", "30,10,3")
    assert done.returncode == 0, done.stderr
    assert (
        "actors     2 actors on 2 nodes (1 CPU each); 2 started on 2 nodes, 0 lost" in done.stdout
    )
    assert_complete_set(out, tree)
    by_node = records_by_node(out)
    assert len(by_node) == 2 and sum(by_node.values()) == 6, by_node


def test_a_request_no_node_can_host_is_refused_at_once(two_cpu_nodes, tmp_path):
    tree = make_tree(tmp_path / "tree", n_per_class=1, bad=False)
    start = time.monotonic()
    done = run_build(two_cpu_nodes, tree, tmp_path / "out", "--cpus-per-worker", "2", timeout=90)
    elapsed = time.monotonic() - start
    assert done.returncode == 1 and elapsed < 60
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "no node can host one actor of 2 CPU: the largest node is" in lines[0]
    assert "(1 CPU)" in lines[0]


def wait_for_shards(out: Path, n: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while len(list((out / "train").glob("*.tar"))) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.2)


def test_a_node_removed_mid_job_loses_nothing(tmp_path):
    tree = make_tree(tmp_path / "tree", n_per_class=4, bad=False)
    out = tmp_path / "out"
    with ray_cluster({"num_cpus": 1}, {"num_cpus": 1}) as (cluster, (worker,)):
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        cmd = texture_build_cmd(tree, out, "--steps", "60,20,5", "--actor-wait", "60")
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_for_shards(out, 2, proc)
            cluster.remove_node(worker)
            stdout, stderr = proc.communicate(timeout=JOB_TIMEOUT_S)
        finally:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "2 started on 2 nodes, 1 lost" in stdout, stdout
    assert_complete_set(out, tree)
    by_node = records_by_node(out)
    assert sum(by_node.values()) == 8 and len(by_node) == 2, by_node


def test_with_no_actor_placeable_the_job_stops_with_what_to_rerun(tmp_path):
    tree = make_tree(tmp_path / "tree", n_per_class=4, bad=False)
    out = tmp_path / "out"
    with ray_cluster({"num_cpus": 0}, {"num_cpus": 1}) as (cluster, (worker,)):
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        cmd = texture_build_cmd(tree, out, "--steps", "60,20,5", "--actor-wait", "20")
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_for_shards(out, 1, proc)
            cluster.remove_node(worker)
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            proc.kill()
    assert proc.returncode == 1
    (line,) = stderr.strip().splitlines()
    assert "no synthesis actor is running (none could be placed for 20 s" in line
    assert "Rerun the same command" in line and f"nsneg-textures build --imagenet {tree}" in line
    manifest = load_manifest(out)  # the finished shards are listed, the set is not complete
    finished = manifest["splits"]["train"]["shards"]
    assert manifest["splits"]["train"]["complete"] is False and 1 <= len(finished) < 8
    assert verify(out) == [] and not list((out / "train").glob(".*tmp*"))


def test_a_gpu_shaped_cluster_gets_one_actor_per_declared_gpu(tmp_path):
    tree = make_tree(tmp_path / "tree", n_per_class=2, bad=False)
    out = tmp_path / "out"
    with ray_cluster({"num_cpus": 2, "num_gpus": 2}, {"num_cpus": 1, "num_gpus": 1}) as (
        cluster,
        _,
    ):
        done = run_build(cluster, tree, out, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    # 2 GPUs + 2 CPUs: two actors of 1 GPU + 1 CPU; 1 GPU + 1 CPU: one
    assert (
        "actors     3 actors on 2 nodes (1 CPU + 1 GPU each); 3 started on 2 nodes" in done.stdout
    )
    assert_complete_set(out, tree)
    assert all(
        json.loads(record_path(p).read_text())["node"]["id"] for p in shard_paths(out, "train")
    )
