"""Shared fixtures. Plain helpers (photos, encoded bytes, trees) live in tests/support/nsneg_testing."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def cli():
    """``cli(group, *args)``: run a click command in-process (arguments go through ``str``); an
    exception other than click's exit is raised, so a crash is a test error, not an exit code."""
    from click.testing import CliRunner

    def invoke(group, *args):
        result = CliRunner().invoke(group, [str(a) for a in args])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return invoke


@pytest.fixture(scope="session")
def make_checkpoint():
    """``make_checkpoint(path, released=False)``: a seeded, untrained resnet18 checkpoint at ``path``.

    ``released=False``: ours (``nsneg.trainer.checkpoint.save`` of a MoCo, small-image stem, trained at
    32 px); ``released=True``: the paper's release format (``state_dict`` of ``module.encoder_q.*``,
    no image size, so 224 is assumed)."""
    import torch

    from nsneg.trainer import checkpoint
    from nsneg.trainer.methods.moco import MoCo, build_backbone

    def make(path, released: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        if released:
            encoder = build_backbone("resnet18")
            state = {  # the release's head keys are ``fc.0.*``, ``fc.2.*`` (an nn.Sequential)
                "module.encoder_q." + k.replace("fc.layers.", "fc."): v
                for k, v in encoder.state_dict().items()
            }
            torch.save({"state_dict": state, "arch": "resnet18"}, path)
        else:
            model = MoCo(
                build_backbone("resnet18", small_images=True),
                build_backbone("resnet18", small_images=True),
                K=64,
            )
            checkpoint.save(
                path,
                {
                    "method": "moco",
                    "model": model.state_dict(),
                    "backbone": model.backbone_state_dict(),
                    "config": {"arch": "resnet18", "small_images": True, "image_size": 32},
                },
            )
        return path

    return make


@pytest.fixture(scope="session")
def texture_shards(tmp_path_factory, ray_session):
    """(shard set, ImageNet tree): one set made by the real Ray job for the whole test run.

    Two classes of three real photos, shards of two samples, source pixels included.
    Read-only: a test that changes it copies it first (``shutil.copytree``).
    """
    from nsneg.pipeline import job
    from nsneg.pipeline.sources import folder_listing
    from nsneg_testing import TINY, make_tree

    base = tmp_path_factory.mktemp("texture-shards")
    tree = make_tree(base / "imagenet", n_per_class=3, bad=False)
    shards = base / "shards"
    job.run(
        job.JobConfig(out=shards, synthesis=TINY, shard_size=2),
        folder_listing(tree, "train"),
        show_progress=False,
    )
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


def pytest_collection_modifyitems(items):
    """A test that needs a Ray cluster (``ray_session``, directly or through a shard set built by a
    job) is in the slow tier, like those marked ``slow`` by hand: ``pytest -m "not slow"`` is the
    edit loop's tier."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
