"""A researcher's loop: a YAML-configured run writes its resolved config and TensorBoard events,
training from that config reproduces the run, a run resumes from another folder with its data at
another path (other data is refused), W&B in offline mode, and a new method is one file plus one
registry line."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from nsneg.trainer import checkpoint
from nsneg.trainer.cli import main
from nsneg.trainer.config import TrainConfig
from nsneg.trainer.methods import REGISTRY
from nsneg.trainer.train import Trainer
from nsneg_testing import SMALL_METHOD, SMALL_RUN

RUN = dict(SMALL_RUN, epochs=1, steps_per_epoch=2, shuffle_buffer=4, log_every=1)


def scalars(events: Path) -> dict[str, list[float]]:
    """TensorBoard's scalars in a run's event files, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events))
    acc.Reload()
    found = {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    found["images"] = acc.Tags()["images"]
    return found


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.slow
def test_a_yaml_configured_run_writes_its_resolved_config_and_events_and_reruns_exactly(
    shards, tmp_path, cli
):
    small = {"moco": {"dim": 16, "k": 16}, "byol": {"proj_dim": 8}}  # byol's: ignored
    config_file = write_yaml(tmp_path / "run.yaml", {**RUN, "negatives": str(shards), **small})
    first = cli(
        main, "--config", config_file, "--out", tmp_path / "a", "--seed", 3, "--device", "cpu"
    )
    assert first.exit_code == 0, first.output
    resolved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert resolved["seed"] == 3 and resolved["arch"] == "resnet18"  # the option overrides the file
    assert resolved["moco"] == {"dim": 16, "k": 16, "m": 0.99, "t": 0.2}  # defaults filled in
    assert "byol" not in resolved and resolved["small_images"] is True  # decided at 32 px
    assert resolved["nsneg_version"] and resolved["data"]["kind"] == "shards"
    assert resolved["data"]["shards"] == 3 and len(resolved["data"]["sha256"]) == 64
    events = scalars(tmp_path / "a" / "tensorboard")
    assert len(events["step/loss"]) == 2 and all(
        map(torch.isfinite, map(torch.tensor, events["step/loss"]))
    )
    assert {
        "step/acc",
        "step/ns_outrank",
        "step/lr",
        "step/img_per_s",
        "step/skipped",
    } <= events.keys()
    assert events["step/skipped"] == [0, 0] and events["images"] == ["negatives"]
    again = cli(
        main, "--config", tmp_path / "a" / "config.yaml", "--out", tmp_path / "b", "--device", "cpu"
    )
    assert again.exit_code == 0, again.output
    a, b = (checkpoint.load(tmp_path / run / "checkpoint.pt")["model"] for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text()) | {
        "out": "x"
    } == resolved | {"out": "x"}


@pytest.mark.slow
def test_a_config_naming_other_data_or_unknown_settings_is_refused_before_training(
    shards, texture_shards, tmp_path, cli
):
    config_file = write_yaml(tmp_path / "bad.yaml", {**RUN, "negatives": str(shards), "moco_k": 16})
    bad = cli(main, "--config", config_file, "--out", tmp_path / "x")
    assert bad.exit_code == 1 and "unknown setting moco_k" in bad.output and "moco" in bad.output
    other = write_yaml(
        tmp_path / "other.yaml",
        {**RUN, "negatives": str(texture_shards[1] / "train"), "negatives_kind": "patch",
         "data": {"kind": "shards", "shards": 3, "samples": 6, "sha256": "0" * 64}},
    )  # fmt: skip
    refused = cli(main, "--config", other, "--out", tmp_path / "y", "--device", "cpu")
    assert refused.exit_code == 2 and "is not the data" in refused.output
    assert not (tmp_path / "y").exists()
    typo = cli(main, "--negatives", tmp_path / "nothing-here", "--arch", "resnet_18")
    assert typo.exit_code == 1 and "did you mean resnet18" in typo.output
    assert "list_models" in typo.output and len(typo.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_run_resumes_from_another_folder_with_its_data_at_another_path(
    shards, texture_shards, tmp_path, cli, monkeypatch
):
    here = tmp_path / "node-a"
    here.mkdir()
    shutil.copytree(shards, here / "shards")
    monkeypatch.chdir(here)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in RUN.items()] + [
        "--moco-k",
        16,
        "--device",
        "cpu",
    ]
    first = cli(main, *args, "--negatives", "shards", "--out", "runs/x")
    assert first.exit_code == 0, first.output
    moved = tmp_path / "node-b"
    shutil.copytree(here / "runs", moved / "runs")
    shutil.copytree(here / "shards", moved / "mnt" / "data" / "set")
    shutil.rmtree(here)
    monkeypatch.chdir(moved)
    stuck = cli(main, "--resume", "runs/x/checkpoint.pt", "--epochs", 2, "--device", "cpu")
    assert stuck.exit_code == 1 and "shards" in stuck.output  # the stored relative path is gone
    resumed = cli(
        main, "--resume", "runs/x/checkpoint.pt", "--epochs", 2, "--device", "cpu",
        "--negatives", moved / "mnt" / "data" / "set",
    )  # fmt: skip
    assert resumed.exit_code == 0, resumed.output
    assert (
        "resume: --negatives shards ->" in resumed.output
        and "the same data: 3 shards" in resumed.output
    )
    state = checkpoint.load(moved / "runs" / "x" / "checkpoint.pt")
    assert state["epoch"] == 2 and state["config"]["negatives"] == str(
        moved / "mnt" / "data" / "set"
    )
    other = cli(
        main, "--resume", "runs/x/checkpoint.pt", "--epochs", 3, "--device", "cpu",
        "--negatives", texture_shards[1] / "train",
    )  # fmt: skip
    assert other.exit_code == 2 and "is not the data" in other.output
    assert "kind shards -> image_folder" in other.output


@pytest.mark.slow
def test_an_image_folder_is_the_same_data_wherever_its_class_folders_live(tmp_path):
    """ImageNet subsets are often trees of links to class folders elsewhere: the identity reads
    the paths as listed under the tree, so a linked tree is the data of its copy."""
    from nsneg.trainer.data import image_folder
    from nsneg.trainer.data_identity import data_identity, differences
    from nsneg_testing import make_tree

    copied = make_tree(tmp_path / "copy", bad=False) / "train"
    linked = tmp_path / "linked"
    linked.mkdir()
    for folder in sorted(copied.iterdir()):
        (linked / folder.name).symlink_to(folder, target_is_directory=True)
    a, b = data_identity(str(copied)), data_identity(str(linked))
    assert a["kind"] == "image_folder" and a["images"] == len(image_folder(copied)) > 0
    assert differences(a, b) == []
    listed = image_folder(linked)
    assert data_identity(str(linked), images=listed) == b  # the caller's listing, same identity
    first = sorted(copied.iterdir())[0]
    next(p for p in sorted(first.iterdir())).write_bytes(b"other bytes")  # one file changed
    assert differences(a, data_identity(str(linked))) == ["the content hashes differ"]


def test_wandb_offline_run_records_the_scalars_and_the_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'nsneg[wandb]')")
    from nsneg_testing import make_tree

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    images = make_tree(tmp_path / "images", bad=False) / "train"  # patch negatives need no texture
    out = tmp_path / "run"
    config = TrainConfig(
        negatives=str(images), out=str(out), negatives_kind="patch", **RUN,
        **SMALL_METHOD["moco"], wandb="nsneg-test",
    )  # fmt: skip
    Trainer(config, device="cpu", show_progress=False).fit()
    import wandb

    wandb.teardown()  # the W&B service writes the run's records asynchronously: wait for them
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and (out / "wandb-run-id").read_text().strip() in runs[0].name
    records = b"".join(path.read_bytes() for path in runs[0].glob("run-*.wandb"))
    # the run's records hold their keys and JSON values as protobuf strings: the scalars of
    # both tags, the resolved config (the method's section, the data's identity)
    for key in (b"step/loss", b"step/ns_outrank", b"step/skipped", b"epoch/loss", b'"k":16'):
        assert key in records, key
    assert b'"kind":"image_folder"' in records
    assert list((runs[0] / "files" / "media" / "images").glob("negatives_*.png"))


@pytest.mark.slow
def test_a_fourth_method_is_one_file_and_one_registry_line(shards, tmp_path, monkeypatch):

    monkeypatch.setitem(REGISTRY, "inbatch", "nsneg_testing.fourth_method:InBatch")  # the line
    assert "inbatch" in SMALL_METHOD and SMALL_METHOD["inbatch"]["method_settings"].t == 0.5
    config = TrainConfig(
        negatives=str(shards),
        out=str(tmp_path),
        **{**RUN, "steps_per_epoch": 1},
        **SMALL_METHOD["inbatch"],
    )
    trainer = Trainer(config, device="cpu", show_progress=False)
    before = [p.detach().clone() for p in trainer.model.backbone.parameters()]
    metrics = trainer.fit()
    assert trainer.step == 1 and torch.isfinite(torch.tensor(metrics["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.backbone.parameters()))
    resolved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert resolved["method"] == "inbatch" and resolved["inbatch"] == {"t": 0.5}
    backbone, stored = checkpoint.load_backbone(tmp_path / "checkpoint.pt")
    assert stored["method"] == "inbatch"
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(backbone(x), trainer.model.backbone.eval()(x), atol=1e-6)
