"""Trainer fixtures: one small shard set made by the real Ray job, shared by the data and training tests."""

from __future__ import annotations

import pytest

from tests.helpers import TINY, make_tree


@pytest.fixture(scope="session")
def shards(tmp_path_factory, ray_session):
    """8 training samples in 2 shards of 4 (two classes), with source pixels and a verified manifest."""
    from pipeline import job
    from pipeline.sources import folder_listing

    root = tmp_path_factory.mktemp("trainer")
    listing = folder_listing(make_tree(root / "tree", n_per_class=4, bad=False), "train")
    out = root / "shards"
    job.run(job.JobConfig(out=out, synthesis=TINY, shard_size=4), listing, show_progress=False)
    return out
