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

    ``released=False``: ours (``trainer.checkpoint.save`` of a MoCo, small-image stem, trained at
    32 px); ``released=True``: the paper's release format (``state_dict`` of ``module.encoder_q.*``,
    no image size, so 224 is assumed)."""
    import torch

    from trainer import checkpoint
    from trainer.moco import MoCo, build_encoder

    def make(path, released: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        if released:
            encoder = build_encoder("resnet18")
            state = {"module.encoder_q." + k: v for k, v in encoder.state_dict().items()}
            torch.save({"state_dict": state, "arch": "resnet18"}, path)
        else:
            model = MoCo(build_encoder("resnet18", small_images=True), build_encoder("resnet18", small_images=True),
                         K=64)
            checkpoint.save(path, {"model": model.state_dict(),
                                   "config": {"arch": "resnet18", "small_images": True, "image_size": 32}})
        return path

    return make
