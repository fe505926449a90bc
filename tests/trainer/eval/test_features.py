"""nsneg.trainer.eval.features: class alignment, datasets, and the one error policy of backbone loading."""

import pytest
import torch

from nsneg.trainer.eval import features


def test_align_classes_matches_by_name_and_rejects_other_sets():
    assert features.align_classes(["a", "b", "c"], ["c", "a", "b"]).tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match=r"only in train \['c'\].*only in val \['d'\]"):
        features.align_classes(["a", "b", "c"], ["a", "b", "d"])


def test_backbone_from_checkpoint_error_policy(make_checkpoint, tmp_path):
    backbone, config = features.backbone_from_checkpoint(make_checkpoint(tmp_path / "ours.pt"))
    assert config["image_size"] == 32 and isinstance(backbone.fc, torch.nn.Identity)
    with pytest.raises(FileNotFoundError, match="checkpoint .*missing.pt not found"):
        features.backbone_from_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_text("not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pt is not a readable torch checkpoint"):
        features.backbone_from_checkpoint(tmp_path / "garbage.pt")
    torch.save({"foo": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="expected an nsneg checkpoint"):
        features.backbone_from_checkpoint(tmp_path / "foreign.pt")


def test_load_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is neither a shard directory"):
        features.load_dataset(tmp_path, "train", 32)
    (tmp_path / "n01440764").mkdir()
    (tmp_path / "n01440764" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="Found no valid file"):
        features.load_dataset(tmp_path, "train", 32)
