"""A shard set made by an earlier generator version is refused, naming both versions."""

from __future__ import annotations

import pytest

from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.manifest import ManifestError, build_manifest
from nsneg.datasets_manifest.format.naming import MANIFEST_NAME
from nsneg.pipeline import shards
from nsneg.pipeline.job import JobConfig
from nsneg.pipeline.synthesis import GENERATOR_VERSION


def test_a_set_of_the_previous_generator_is_refused_with_both_versions(tmp_path):
    generator = JobConfig(out=tmp_path).generator_config()
    assert generator["synthesis"]["version"] == GENERATOR_VERSION
    old = {**generator, "synthesis": {**generator["synthesis"], "version": "nsneg-gram-adam-4"}}
    manifest = build_manifest(["a"], {}, old, True)
    files.atomic_write_json(tmp_path / MANIFEST_NAME, manifest)
    with pytest.raises(ManifestError) as e:
        shards.check_mergeable(tmp_path, ["a"], generator, True)
    assert "nsneg-gram-adam-4" in str(e.value) and GENERATOR_VERSION in str(e.value)
    assert shards.check_mergeable(tmp_path, ["a"], old, True) is not None  # the same: accepted
