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


@pytest.fixture(scope="session", autouse=True)
def nsneg_user_dirs(tmp_path_factory):
    """The verified-shard cache and the user's manifest folder live in a temporary folder, never in
    the real home (set in os.environ so subprocesses inherit them)."""
    import os

    base = tmp_path_factory.mktemp("nsneg-user")
    saved = {k: os.environ.get(k) for k in ("NSNEG_CACHE_DIR", "NSNEG_MANIFEST_DIR")}
    os.environ.update(NSNEG_CACHE_DIR=str(base / "cache"), NSNEG_MANIFEST_DIR=str(base / "sets"))
    yield base
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
