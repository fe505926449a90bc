"""Checkpoints: atomic, versioned, loaded with weights_only; backbones from ours and the paper's."""

import pytest
import torch

from nsneg.trainer import checkpoint
from nsneg.trainer.methods.moco import MoCo, build_backbone


def test_save_load_round_trip_and_backbone(tmp_path):
    torch.manual_seed(0)
    model = MoCo(
        build_backbone("resnet18", dim=16, small_images=True),
        build_backbone("resnet18", dim=16, small_images=True),
        dim=16,
        K=32,
    )
    path = tmp_path / "run" / "checkpoint.pt"
    checkpoint.save(
        path,
        {
            "model": model.state_dict(),
            "backbone": model.backbone_state_dict(),
            "epoch": 3,
            "config": {"arch": "resnet18", "small_images": True},
        },
    )
    assert [p.name for p in path.parent.iterdir()] == [
        "checkpoint.pt"
    ]  # no temporary file left behind
    state = checkpoint.load(path)
    assert state["epoch"] == 3 and torch.equal(state["model"]["queue"], model.queue)
    backbone, config = checkpoint.load_backbone(path)
    x = torch.rand(2, 3, 32, 32)
    model.encoder_q.eval()
    model.encoder_q.fc = torch.nn.Identity()
    assert config["arch"] == "resnet18" and torch.allclose(backbone(x), model.encoder_q(x))


def test_foreign_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        checkpoint.load(tmp_path / "nothing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an nsneg training checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="expected an nsneg checkpoint or a MoCo checkpoint"):
        checkpoint.load_backbone(tmp_path / "other.pt")
    torch.save(
        {"format": checkpoint.FORMAT, "version": checkpoint.VERSION + 1}, tmp_path / "future.pt"
    )
    with pytest.raises(ValueError, match="checkpoint version"):
        checkpoint.load(tmp_path / "future.pt")


def test_the_papers_released_checkpoint_loads_as_a_backbone(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path / "moco_v2_800ep_pretrain.pth.tar", released=True)
    backbone, config = checkpoint.load_backbone(path)
    released = torch.load(path, weights_only=True)["state_dict"]
    assert config == {"arch": "resnet18"}
    assert torch.equal(backbone.conv1.weight, released["module.encoder_q.conv1.weight"])
