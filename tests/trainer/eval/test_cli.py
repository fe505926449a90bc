"""nsneg-eval knn and linear end to end on real image trees, real checkpoints and a real shard set,
and their errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nsneg.datasets_manifest.format.manifest import load_manifest
from nsneg.trainer import checkpoint
from nsneg.trainer.eval import features, probes, stats
from nsneg_testing import encode

COLOURS = {"n01440764": (200, 40, 40), "n01443537": (40, 180, 60), "n01484850": (50, 70, 210)}


# --------------------------------------------------------------------------- fixtures


def colour_tree(root: Path, per_class: int, seed: int, classes=COLOURS) -> Path:
    """DIR/<wnid>/*.png: 48 px images of a class colour plus noise and a random bright square."""
    rng = np.random.default_rng(seed)
    for wnid, colour in classes.items():
        (root / wnid).mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(np.array(colour) + rng.normal(0, 25, (48, 48, 3)), 0, 255)
            y, x = rng.integers(0, 32, 2)
            img[y : y + 16, x : x + 16] = 255
            (root / wnid / f"{wnid}_{i}.png").write_bytes(
                encode(Image.fromarray(img.astype(np.uint8)))
            )
    return root


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    return colour_tree(root / "train", 6, seed=0), colour_tree(root / "val", 3, seed=1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, make_checkpoint) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "moco.pt")


@pytest.fixture
def probe(invoke, ckpt):
    """``probe(command, train, val, *options)``: ``nsneg-eval knn`` or ``linear`` with ``ckpt``."""
    return lambda command, train, val, *args: invoke(
        command, "--checkpoint", ckpt, "--train", train, "--val", val, *args
    )


# --------------------------------------------------------------------------- commands


def test_knn_command_on_image_folders(probe, trees, tmp_path):
    train, val = trees
    out = tmp_path / "knn.json"
    result = probe("knn", train, val, "--k", 5, "--workers", 0, "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    low, high = stats.wilson(round(9 * report["top1"]), 9)
    assert report["top1_interval"] == pytest.approx([low, high]) and low <= report["top1"] <= high
    assert result.stdout.startswith(
        f"knn top-1: {100 * report['top1']:.2f}% [{100 * low:.2f}, {100 * high:.2f}] (n=9) "
        "(Wilson 95%), chance 33.33% (3 classes); k=5, T=0.07, 18 train images"
    )
    assert report["metric"] == "knn" and report["k"] == 5 and report["t"] == 0.07
    assert report["chance"] == pytest.approx(1 / 3) and "note:" not in result.stdout
    # A k above the training set is capped, and said so: in the terminal and in the JSON.
    capped = probe("knn", train, val, "--workers", 0, "--json", tmp_path / "capped.json")
    assert capped.exit_code == 0, capped.output
    assert "note: k=200 asked, 18 used: there are only 18 training images" in capped.stdout
    assert "k=18, T=0.07" in capped.stdout
    recorded = json.loads((tmp_path / "capped.json").read_text())
    assert (recorded["k"], recorded["k_requested"]) == (18, 200)
    assert (report["arch"], report["image_size"], report["classes"]) == ("resnet18", 32, 3)
    assert (report["train_samples"], report["val_samples"]) == (18, 9)
    assert report["top1"] >= 2 / 3  # three colours, even through a random network
    # Evaluated on its own training images: said to be a plumbing check.
    itself = probe("knn", train, train, "--k", 5, "--workers", 0)
    assert itself.exit_code == 0 and "note: val is the training set" in itself.stderr


def test_linear_command_trains_saves_and_reloads_the_head(probe, trees, ckpt, tmp_path):
    train, val = trees
    head_path, out = tmp_path / "heads" / "head.pt", tmp_path / "linear.json"
    options = ["--epochs", 30, "--workers", 0, "--out", head_path, "--json", out]
    result = probe("linear", train, val, *options)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert result.stdout.startswith(
        f"note: batch size 128 asked, 18 used: there are only 18 training images\n"
        f"linear top-1: {100 * report['top1']:.2f}% ["
    )
    assert "chance 33.33% (3 classes); train 100.00% of 18 images, 30 epochs" in result.stdout
    assert (report["batch_size"], report["batch_size_requested"]) == (18, 128)
    assert report["chance"] == pytest.approx(1 / 3) and len(report["top1_interval"]) == 2
    assert (
        report["metric"] == "linear" and report["epochs"] == 30 and report["lr"] == probes.LINEAR_LR
    )
    assert not list(head_path.parent.glob(".*tmp*"))

    raw = torch.load(head_path, weights_only=True)
    assert raw["format"] == "nsneg-linear-head" and raw["checkpoint"] == str(ckpt)
    head, info = probes.load_linear_head(head_path)
    assert info["classes"] == sorted(COLOURS) and (info["arch"], info["image_size"]) == (
        "resnet18",
        32,
    )
    assert head.weight.shape == (3, 512)
    # The head applies to raw backbone features: it reproduces the reported val accuracy by itself.
    backbone, _ = checkpoint.load_backbone(ckpt)
    dataset, _ = features.load_dataset(val, "val", 32)
    x, y = features.extract_features(
        backbone, torch.utils.data.DataLoader(dataset, batch_size=4), "cpu"
    )
    assert probes.top1(head, x, y) == pytest.approx(report["top1"])


def test_checkpoint_errors(invoke, trees, tmp_path):
    train, val = trees
    foreign = tmp_path / "foreign.pt"
    torch.save({"foo": 1}, foreign)
    (tmp_path / "garbage.pt").write_text("not a checkpoint at all")
    cases = [
        (foreign, "expected an nsneg checkpoint"),
        (tmp_path / "garbage.pt", "is not a readable torch checkpoint"),
        (tmp_path / "missing.pt", "not found"),
    ]
    for path, message in cases:
        result = invoke("knn", "--checkpoint", path, "--train", train, "--val", val)
        assert result.exit_code == 1 and "Error: " in result.output and message in result.output, (
            result.output
        )


def test_dataset_errors(probe, trees, tmp_path):
    train, _ = trees
    other = colour_tree(
        tmp_path / "other", 1, seed=2, classes={"n01440764": (200, 40, 40), "n09999999": (0, 0, 0)}
    )
    result = probe("knn", train, other, "--workers", 0)
    assert result.exit_code == 1 and "train and val classes differ" in result.output
    assert "n09999999" in result.output
    (tmp_path / "empty" / "n01440764").mkdir(parents=True)
    result = probe("linear", tmp_path / "empty", train, "--out", tmp_path / "h.pt")
    assert (
        result.exit_code == 1 and "Found no valid file for the classes n01440764" in result.output
    )
    assert (
        f"{tmp_path / 'empty'} is neither a shard directory" in result.output
        and not (tmp_path / "h.pt").exists()
    )


# --------------------------------------------------------------------------- shard sets


def test_knn_on_shard_source_photos(probe, texture_shards, tmp_path):
    root, tree = texture_shards
    manifest = load_manifest(root)
    assert (
        manifest["splits"]["train"]["samples"] == 6
        and len(manifest["splits"]["train"]["shards"]) == 3
    )
    out = tmp_path / "knn.json"
    # Same photos on both sides, k=1: every photo finds itself. Two workers share the three shards,
    # each read once.
    on_itself = ["--val-split", "train", "--k", 1]
    result = probe("knn", root, root, *on_itself, "--workers", 2, "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["top1"] == 1.0 and (
        report["train_samples"],
        report["val_samples"],
        report["classes"],
    ) == (6, 6, 2)
    # A shard set's source photos and the folder they came from give the same features.
    result = probe("knn", tree / "train", root, *on_itself, "--workers", 0)
    assert result.exit_code == 0 and result.stdout.startswith("knn top-1: 100.00%"), result.output


def test_shard_set_errors(probe, texture_shards, tmp_path):
    root, _ = texture_shards
    result = probe("knn", root, root)  # no val split was built
    assert result.exit_code == 1 and "has no split 'val'" in result.output
    textures_only = tmp_path / "textures_only"
    shutil.copytree(root, textures_only)
    manifest = json.loads((textures_only / "manifest.json").read_text())
    (textures_only / "manifest.json").write_text(json.dumps({**manifest, "has_source": False}))
    result = probe("knn", textures_only, root, "--val-split", "train")
    assert result.exit_code == 1 and "textures only" in result.output
