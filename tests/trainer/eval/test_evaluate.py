"""nsneg-eval: the kNN and linear-probe maths, the commands end to end on real image
trees, real checkpoints and a real shard set, and their errors."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from pipeline import contract, job
from pipeline.sources import folder_listing
from pipeline.synthesis import SynthesisConfig
from trainer import checkpoint, evaluate
from trainer.moco import MoCo, build_backbone
from tests.helpers import encode, photo

COLOURS = {"n01440764": (200, 40, 40), "n01443537": (40, 180, 60), "n01484850": (50, 70, 210)}
PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png", "brick.png"]


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
            (root / wnid / f"{wnid}_{i}.png").write_bytes(encode(Image.fromarray(img.astype(np.uint8))))
    return root


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    return colour_tree(root / "train", 6, seed=0), colour_tree(root / "val", 3, seed=1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "moco.pt"
    model = MoCo(build_backbone("resnet18", small_images=True), build_backbone("resnet18", small_images=True), K=64)
    checkpoint.save(path, {"model": model.state_dict(),
                           "config": {"arch": "resnet18", "small_images": True, "image_size": 32}})
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_session):
    """A real shard set (Ray job, source photos kept) of two classes, three photos each, in two shards."""
    src = tmp_path_factory.mktemp("imagenet")
    for c, wnid in enumerate(["n00000001", "n00000002"]):
        (src / "train" / wnid).mkdir(parents=True)
        for i in range(3):
            img = photo(PHOTOS[c * 3 + i], (128, 112))
            (src / "train" / wnid / f"{wnid}_{i}.JPEG").write_bytes(encode(img, "JPEG", quality=92))
    out = tmp_path_factory.mktemp("shards")
    config = job.JobConfig(out=out, split="train", synthesis=SynthesisConfig(steps=(2, 1, 1), batch_size=8),
                           shard_size=3, max_skip_fraction=0.5)
    job.run(config, folder_listing(src, "train"), show_progress=False)
    return out, src / "train"


def invoke(*args: str):
    result = CliRunner().invoke(evaluate.main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


# --------------------------------------------------------------------------- kNN


def naive_knn(train_x, train_y, test_x, test_y, k, T, num_classes) -> float:
    """One test row at a time, straight from the definition."""
    correct = 0
    for x, y in zip(test_x, test_y):
        sims = [float(F.cosine_similarity(x, t, dim=0)) for t in train_x]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        scores = [0.0] * num_classes
        for i in order:
            scores[int(train_y[i])] += float(np.exp(sims[i] / T))
        correct += int(np.argmax(scores) == int(y))
    return correct / len(test_y)


def clusters(n_per_class: int, num_classes: int, dim: int, seed: int, spread: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1234))
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


def test_knn_separates_clusters_and_is_chance_on_shuffled_labels():
    train_x, train_y = clusters(30, 5, 32, seed=0)
    test_x, test_y = clusters(10, 5, 32, seed=1)
    assert evaluate.knn_accuracy(train_x * 7.0, train_y, test_x, test_y, k=20, T=0.07) == 1.0  # scale-free
    shuffled = train_y[torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))]
    accs = [evaluate.knn_accuracy(*clusters(200, 5, 32, seed=s), test_x, test_y[torch.randperm(50)], k=20)
            for s in range(3)] + [evaluate.knn_accuracy(train_x, shuffled, test_x, test_y, k=20)]
    assert 0.1 <= float(np.mean(accs)) <= 0.35, accs  # chance is 0.2


def test_knn_votes_are_weighted_by_exp_sim_over_T():
    """One neighbour at cosine 0.99 (class 0) against two at 0.9 (class 1), k=3:
    exp(0.99/0.07) > 2 exp(0.9/0.07), so a sharp T trusts the nearest; at T=1 the pair wins."""
    angles = torch.tensor([np.arccos(0.99), np.arccos(0.9), -np.arccos(0.9), np.pi])
    train_x = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [3.0], [0.5], [2.0]])
    train_y, test_x = torch.tensor([0, 1, 1, 0]), torch.tensor([[5.0, 0.0]])
    assert evaluate.knn_accuracy(train_x, train_y, test_x, torch.tensor([0]), k=3, T=0.07) == 1.0
    assert evaluate.knn_accuracy(train_x, train_y, test_x, torch.tensor([1]), k=3, T=1.0) == 1.0


@pytest.mark.parametrize("k,T,chunk", [(1, 0.07, 256), (5, 0.1, 3), (7, 0.5, 4), (100, 0.07, 5)])
def test_knn_matches_naive_loop(k, T, chunk):
    g = torch.Generator().manual_seed(k)
    train_x, train_y = torch.randn(40, 8, generator=g), torch.randint(0, 4, (40,), generator=g)
    test_x, test_y = torch.randn(23, 8, generator=g), torch.randint(0, 4, (23,), generator=g)
    got = evaluate.knn_accuracy(train_x, train_y, test_x, test_y, k=k, T=T, num_classes=4, chunk_size=chunk)
    assert got == naive_knn(train_x, train_y, test_x, test_y, min(k, 40), T, 4)


# --------------------------------------------------------------------------- linear probe


def test_linear_probe_default_separates_and_applies_to_raw_features():
    x, y = clusters(40, 4, 64, seed=0, spread=0.8)
    test_x, test_y = clusters(20, 4, 64, seed=1, spread=0.8)
    x, test_x = 50.0 * x.relu() + 3.0, 50.0 * test_x.relu() + 3.0  # raw-feature-like: non-negative, large, offset
    x[:, 0], test_x[:, 0] = 0.0, 5.0  # a unit that never fires in training but does at test time
    head = evaluate.train_linear(x, y, 4, epochs=30, batch_size=32)
    assert evaluate.top1(head, x, y) == 1.0 and evaluate.top1(head, test_x, test_y) >= 0.95
    assert torch.all(head.weight[:, 0] == 0)  # zero init, zero gradient: the dead unit cannot blow up


def test_align_classes_matches_by_name_and_rejects_other_sets():
    assert evaluate.align_classes(["a", "b", "c"], ["c", "a", "b"]).tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match=r"only in train \['c'\].*only in val \['d'\]"):
        evaluate.align_classes(["a", "b", "c"], ["a", "b", "d"])


# --------------------------------------------------------------------------- commands


def test_knn_command_on_image_folders(trees, ckpt, tmp_path):
    train, val = trees
    out = tmp_path / "knn.json"
    result = invoke("knn", "--checkpoint", ckpt, "--train", train, "--val", val, "--k", 5, "--workers", 0,
                    "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert result.stdout.startswith(f"knn top-1: {100 * report['top1']:.2f}% (k=5, T=0.07, 9 val / 18 train images)")
    assert report["metric"] == "knn" and report["k"] == 5 and report["t"] == 0.07
    assert (report["arch"], report["image_size"], report["classes"]) == ("resnet18", 32, 3)
    assert (report["train_samples"], report["val_samples"]) == (18, 9)
    assert report["top1"] >= 2 / 3  # three colours, even through a random network


def test_linear_command_trains_saves_and_reloads_the_head(trees, ckpt, tmp_path):
    train, val = trees
    head_path, out = tmp_path / "heads" / "head.pt", tmp_path / "linear.json"
    result = invoke("linear", "--checkpoint", ckpt, "--train", train, "--val", val, "--epochs", 30,
                    "--workers", 0, "--out", head_path, "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert result.stdout.startswith(f"linear top-1: {100 * report['top1']:.2f}% (train 100.00%, 9 val / 18 train")
    assert report["metric"] == "linear" and report["epochs"] == 30 and report["lr"] == evaluate.LINEAR_LR
    assert not list(head_path.parent.glob(".*tmp*"))

    raw = torch.load(head_path, weights_only=True)
    assert raw["format"] == "nsneg-linear-head" and raw["checkpoint"] == str(ckpt)
    head, info = evaluate.load_linear_head(head_path)
    assert info["classes"] == sorted(COLOURS) and (info["arch"], info["image_size"]) == ("resnet18", 32)
    assert head.weight.shape == (3, 512)
    # The head applies to raw backbone features: it reproduces the reported val accuracy by itself.
    backbone, _ = checkpoint.load_backbone(ckpt)
    dataset, _ = evaluate.load_dataset(val, "val", 32)
    x, y = evaluate.extract_features(backbone, torch.utils.data.DataLoader(dataset, batch_size=4), "cpu")
    assert evaluate.top1(head, x, y) == pytest.approx(report["top1"])


def test_checkpoint_errors(trees, tmp_path):
    train, val = trees
    foreign = tmp_path / "foreign.pt"
    torch.save({"foo": 1}, foreign)
    (tmp_path / "garbage.pt").write_text("not a checkpoint at all")
    cases = [(foreign, "expected an nsneg checkpoint"),
             (tmp_path / "garbage.pt", "is not a readable torch checkpoint"),
             (tmp_path / "missing.pt", "not found")]
    for path, message in cases:
        result = invoke("knn", "--checkpoint", path, "--train", train, "--val", val)
        assert result.exit_code == 1 and "Error: " in result.output and message in result.output, result.output


def test_dataset_errors(trees, ckpt, tmp_path):
    train, _ = trees
    other = colour_tree(tmp_path / "other", 1, seed=2, classes={"n01440764": (200, 40, 40), "n09999999": (0, 0, 0)})
    result = invoke("knn", "--checkpoint", ckpt, "--train", train, "--val", other, "--workers", 0)
    assert result.exit_code == 1 and "train and val classes differ" in result.output
    assert "n09999999" in result.output
    (tmp_path / "empty" / "n01440764").mkdir(parents=True)
    result = invoke("linear", "--checkpoint", ckpt, "--train", tmp_path / "empty", "--val", train,
                    "--out", tmp_path / "h.pt")
    assert result.exit_code == 1 and "Found no valid file for the classes n01440764" in result.output
    assert f"{tmp_path / 'empty'} is neither a shard directory" in result.output and not (tmp_path / "h.pt").exists()


def test_load_linear_head_rejects_other_files(ckpt, tmp_path):
    with pytest.raises(ValueError, match="not an nsneg linear head"):
        evaluate.load_linear_head(ckpt)
    bad = tmp_path / "bad.pt"
    torch.save({"format": "nsneg-linear-head", "version": 1, "weight": torch.zeros(3, 4), "bias": torch.zeros(2),
                "classes": ["a", "b", "c"]}, bad)
    with pytest.raises(ValueError, match="do not fit together"):
        evaluate.load_linear_head(bad)
    with pytest.raises(FileNotFoundError):
        evaluate.load_linear_head(tmp_path / "nothing.pt")


# --------------------------------------------------------------------------- shard sets


def test_knn_on_shard_source_photos(shards, ckpt, tmp_path):
    root, folder = shards
    manifest = contract.load_manifest(root)
    assert manifest["splits"]["train"]["samples"] == 6 and len(manifest["splits"]["train"]["shards"]) == 2
    out = tmp_path / "knn.json"
    # Same photos on both sides, k=1: every photo finds itself. Two workers read the two shards once each.
    result = invoke("knn", "--checkpoint", ckpt, "--train", root, "--val", root, "--val-split", "train",
                    "--k", 1, "--workers", 2, "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["top1"] == 1.0 and (report["train_samples"], report["val_samples"], report["classes"]) == (6, 6, 2)
    # A shard set's source photos and the folder they came from give the same features.
    result = invoke("knn", "--checkpoint", ckpt, "--train", folder, "--val", root, "--val-split", "train",
                    "--k", 1, "--workers", 0)
    assert result.exit_code == 0 and result.stdout.startswith("knn top-1: 100.00%"), result.output


def test_shard_set_errors(shards, ckpt, tmp_path):
    root, _ = shards
    result = invoke("knn", "--checkpoint", ckpt, "--train", root, "--val", root)  # no val split was built
    assert result.exit_code == 1 and "has no split 'val'" in result.output
    textures_only = tmp_path / "textures_only"
    shutil.copytree(root, textures_only)
    manifest = json.loads((textures_only / "manifest.json").read_text())
    (textures_only / "manifest.json").write_text(json.dumps({**manifest, "has_source": False}))
    result = invoke("knn", "--checkpoint", ckpt, "--train", textures_only, "--val", root, "--val-split", "train")
    assert result.exit_code == 1 and "textures only" in result.output
