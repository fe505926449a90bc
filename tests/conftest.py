"""Shared fixtures. Plain helpers (photos, encoded bytes, trees) live in tests/helpers.py."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
