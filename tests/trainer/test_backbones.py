"""Backbones by name: torchvision's classifiers and timm's, the classifier taken off whatever its
name, split BN only where there is batch norm, a clear line for an unknown name; a ViT and a
ConvNeXt train a step and go through kNN evaluation."""

import pytest
import torch
from lightly.models.modules.heads import MoCoProjectionHead

from nsneg.trainer import checkpoint
from nsneg.trainer.backbones import build_trunk, check_arch, has_batch_norm
from nsneg.trainer.config import TrainConfig
from nsneg.trainer.methods import METHODS
from nsneg.trainer.methods.moco import SplitBatchNorm2d, build_backbone
from nsneg.trainer.train import Trainer
from nsneg_testing import SMALL_METHOD, SMALL_RUN, tiny_models


@pytest.fixture(scope="module", autouse=True)
def registered():
    tiny_models.register()


@pytest.mark.parametrize(
    "arch,head,dim,batch_norm",
    [
        ("resnet18", "fc", 512, True),
        ("convnext_nano_test", "classifier.2", 32, False),  # LayerNorm2d, Flatten, Linear
        ("vit_nano_test", "heads.head", 32, False),
        ("timm:convnext_atto", "head.fc", 320, False),
    ],
)
def test_the_trunk_is_any_classifier_without_its_last_linear_layer(arch, head, dim, batch_norm):
    if arch.startswith("timm:"):
        pytest.importorskip("timm", reason="timm is not installed (pip install 'nsneg[timm]')")
    torch.manual_seed(0)
    net, feature_dim = build_trunk(arch, image_size=32)
    assert (net.head_name, feature_dim, has_batch_norm(net)) == (head, dim, batch_norm)
    assert isinstance(net.get_submodule(head), torch.nn.Identity)
    assert net.eval()(torch.rand(2, 3, 32, 32)).shape == (2, dim)


def test_a_timm_vit_is_built_for_the_run_s_image_size():
    pytest.importorskip("timm", reason="timm is not installed (pip install 'nsneg[timm]')")
    net, dim = build_trunk("timm:vit_tiny_patch16_224", image_size=32)
    assert dim == 192 and net.patch_embed.img_size == (32, 32)
    assert net.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 192)


def test_moco_splits_batch_norm_only_where_the_network_has_it():
    resnet = build_backbone("resnet18", dim=8, bn_splits=2, small_images=True)
    assert any(isinstance(m, SplitBatchNorm2d) for m in resnet.modules())
    assert isinstance(resnet.fc, MoCoProjectionHead) and resnet.head_name == "fc"  # MoCo's keys
    convnext = build_backbone("convnext_nano_test", dim=8, bn_splits=2, image_size=32)
    assert not has_batch_norm(convnext) and convnext.eval()(torch.rand(2, 3, 32, 32)).shape == (
        2,
        8,
    )
    config = TrainConfig(
        negatives="-", arch="convnext_nano_test", image_size=32, **SMALL_METHOD["moco"]
    )
    model = METHODS["moco"].from_config(config, bn_splits=2)
    assert not model.shuffle_bn and model.bn_splits == 1


@pytest.mark.parametrize(
    "arch,message",
    [
        ("resnet_18", "did you mean resnet18"),
        ("fasterrcnn_resnet50_fpn", "not a torchvision classification model"),
        ("timm:vit_tiny_patch_16_224", "timm has no model 'vit_tiny_patch_16_224'"),
    ],
)
def test_an_unknown_name_is_one_line_saying_where_valid_names_are_listed(arch, message):
    if arch.startswith("timm:"):
        pytest.importorskip("timm", reason="timm is not installed (pip install 'nsneg[timm]')")
    with pytest.raises(ValueError, match=message) as e:
        check_arch(arch)
    assert "list_models" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch,method",
    [("timm:vit_tiny_patch16_224", "moco"), ("vit_nano_test", "simclr"), ("convnext_nano_test", "byol")],
)  # fmt: skip
def test_a_vit_and_a_convnext_train_a_step_and_go_through_knn(
    shards, texture_shards, tmp_path, cli, arch, method
):
    if arch.startswith("timm:"):
        pytest.importorskip("timm", reason="timm is not installed (pip install 'nsneg[timm]')")
    from nsneg.trainer.eval.cli import main as evaluate

    config = TrainConfig(
        negatives=str(shards), out=str(tmp_path), **{**SMALL_RUN, "arch": arch},
        epochs=1, steps_per_epoch=1, **SMALL_METHOD[method],
    )  # fmt: skip
    trainer = Trainer(config, device="cpu", show_progress=False)
    before = [p.detach().clone() for p in trainer.model.backbone.parameters()]
    metrics = trainer.fit()
    assert trainer.step == 1 and torch.isfinite(torch.tensor(metrics["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.backbone.parameters()))
    backbone, stored = checkpoint.load_backbone(tmp_path / "checkpoint.pt")
    trained = trainer.model.backbone_state_dict()  # without MoCo's head where it has one
    assert stored["arch"] == arch and backbone.state_dict().keys() == trained.keys()
    assert all(torch.equal(backbone.state_dict()[k], trained[k]) for k in trained)
    assert backbone(torch.rand(2, 3, 32, 32)).shape[0] == 2
    photos = texture_shards[1] / "train"
    result = cli(
        evaluate, "knn", "--checkpoint", tmp_path / "checkpoint.pt", "--train", photos,
        "--val", photos, "--k", 2, "--workers", 0,
    )  # fmt: skip
    assert result.exit_code == 0 and result.stdout.startswith("knn top-1: "), result.output
