"""The analysis tests' world, made once for the folder: a photo tree, a real shard set made from it
by the Ray job, a checkpoint in the paper's released format and a linear head over the tree's wnids."""

from pathlib import Path

import pytest
import torch

from nsneg.pipeline import job
from nsneg.pipeline.sources import folder_listing
from nsneg_testing import TINY
from nsneg_testing.analysis import SIZE, write_tree
from nsneg.trainer import checkpoint
from nsneg.trainer.analysis.cli import main
from nsneg.trainer.eval import features, probes


@pytest.fixture(scope="package")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("imagenet") / "train", 4)


@pytest.fixture(scope="package")
def shards(tree, tmp_path_factory, ray_session) -> Path:
    out = tmp_path_factory.mktemp("shards")
    config = job.JobConfig(out=out, synthesis=TINY, shard_size=8)
    job.run(config, folder_listing(tree.parent, "train"), show_progress=False)
    return out


@pytest.fixture(scope="package")
def ckpt(tmp_path_factory, make_checkpoint) -> Path:
    """A resnet18 MoCo checkpoint as the paper released theirs: ``state_dict`` of ``module.encoder_q.*``."""
    return make_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "moco_v2_released.pth.tar", released=True
    )


@pytest.fixture(scope="package")
def head(tree, ckpt, tmp_path_factory) -> Path:
    """A linear head over the tree's wnids, trained on the photos' frozen features."""
    backbone, config = checkpoint.load_backbone(ckpt)
    assert config == {"arch": "resnet18"} and not isinstance(backbone.fc, torch.nn.Sequential)
    dataset, classes = features.load_dataset(tree, "train", SIZE)
    x, y = features.extract_features(
        backbone, torch.utils.data.DataLoader(dataset, batch_size=8), "cpu"
    )
    layer = probes.train_linear(x, y, len(classes), epochs=30, batch_size=8)
    path = tmp_path_factory.mktemp("head") / "head.pt"
    probes.save_linear_head(path, layer, classes, "resnet18", SIZE, str(ckpt))
    return path


@pytest.fixture(scope="package")
def invoke(cli):
    """``invoke(*args)``: run ``nsneg-analyze`` in-process."""
    return lambda *args: cli(main, *args)
