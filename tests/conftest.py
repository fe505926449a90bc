"""Shared fixtures. Plain helpers (photos, encoded bytes, trees) live in tests/helpers.py."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def texture_shards(tmp_path_factory, ray_session):
    """(shard set, ImageNet tree): one set made by the real Ray job for the whole session.

    Two classes of three real photos, shards of two samples, source pixels included.
    Read-only: a test that changes it copies it first (``shutil.copytree``).
    """
    from pipeline import job
    from pipeline.sources import folder_listing
    from tests.helpers import TINY, make_tree

    base = tmp_path_factory.mktemp("texture-shards")
    tree = make_tree(base / "imagenet", n_per_class=3, bad=False)
    shards = base / "shards"
    job.run(job.JobConfig(out=shards, synthesis=TINY, shard_size=2), folder_listing(tree, "train"), show_progress=False)
    return shards, tree
