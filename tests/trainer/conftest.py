"""Trainer fixtures: the data and training tests read the suite's shard set."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def shards(texture_shards):
    """The suite's shard set made by the real Ray job (``texture_shards`` in tests/conftest.py):
    6 training samples of two classes in 3 shards of 2, with source pixels and a verified manifest.
    Read-only: a test that changes it copies it first."""
    return texture_shards[0]
