"""nsneg-analyze: the class tables, the descriptor, the decision rules, the cue-conflict images, and
both commands end to end on real photos, a real shard set and a checkpoint in the paper's released
format, every reported number checked against a direct computation."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageOps

from pipeline import contract, job
from pipeline.sources import IMAGENET100, folder_listing
from trainer import analysis, checkpoint, evaluate
from trainer.moco import build_backbone
from tests.helpers import TINY, encode, photo

#: Two dog breeds (one outside Geirhos' "dog" list: Chihuahua), a tabby cat, a computer keyboard, jean, window screen.
CLASSES = {"n02085620": "astronaut.png", "n02099849": "coffee.png", "n02123045": "chelsea.png",
           "n03085013": "motorcycle_left.png", "n03594734": "rocket.jpg", "n04589890": "brick.png"}
SIZE = 64  # the released format records no image size (224 then); tests use small crops to stay fast


def photo_variant(name: str, i: int) -> Image.Image:
    img = photo(name, (112 + 8 * i, 100 + 4 * i))
    return ImageOps.mirror(img) if i % 2 else img


def write_tree(root: Path, per_class: int, offset: int = 0, classes=CLASSES) -> Path:
    for wnid, name in classes.items():
        (root / wnid).mkdir(parents=True)
        for i in range(per_class):
            (root / wnid / f"{wnid}_{i}.png").write_bytes(encode(photo_variant(name, i + offset)))
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("imagenet") / "train", 4)


@pytest.fixture(scope="module")
def shards(tree, tmp_path_factory, ray_session) -> Path:
    out = tmp_path_factory.mktemp("shards")
    config = job.JobConfig(out=out, synthesis=TINY, shard_size=8)
    job.run(config, folder_listing(tree.parent, "train"), show_progress=False)
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A resnet18 MoCo checkpoint as the paper released theirs: ``state_dict`` of ``module.encoder_q.*``."""
    torch.manual_seed(0)
    enc = build_backbone("resnet18")
    path = tmp_path_factory.mktemp("ckpt") / "moco_v2_released.pth.tar"
    state = {"module.encoder_q." + k: v for k, v in enc.state_dict().items()}
    torch.save({"state_dict": state, "arch": "resnet18"}, path)
    return path


@pytest.fixture(scope="module")
def head(tree, ckpt, tmp_path_factory) -> Path:
    """A linear head over the tree's wnids, trained on the photos' frozen features."""
    backbone, config = checkpoint.load_backbone(ckpt)
    assert config == {"arch": "resnet18"} and not isinstance(backbone.fc, torch.nn.Sequential)
    dataset, classes = evaluate.load_dataset(tree, "train", SIZE)
    x, y = evaluate.extract_features(backbone, torch.utils.data.DataLoader(dataset, batch_size=8), "cpu")
    layer = evaluate.train_linear(x, y, len(classes), epochs=30, batch_size=8)
    path = tmp_path_factory.mktemp("head") / "head.pt"
    evaluate.save_linear_head(path, layer, classes, "resnet18", SIZE, str(ckpt))
    return path


def invoke(*args):
    result = CliRunner().invoke(analysis.main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@torch.no_grad()
def direct_predictions(network, head_layer, images, size):
    """One image at a time: eval view -> network -> head -> softmax probabilities."""
    transform = evaluate.eval_transform(size)
    return [head_layer(network.eval()(transform(im.convert("RGB"))[None])).softmax(dim=1)[0] for im in images]


def direct_counts(network, head_layer, pairs, size, num_classes):
    correct, total = [0] * num_classes, [0] * num_classes
    probabilities = direct_predictions(network, head_layer, [im for im, _ in pairs], size)
    for probs, cls in zip(probabilities, [c for _, c in pairs]):
        total[cls] += 1
        correct[cls] += int(int(probs.argmax()) == cls)
    return correct, total


# --------------------------------------------------------------------------- tables and pieces


def test_class_tables():
    assert len(analysis.DOG_BREEDS) == len(set(analysis.DOG_BREEDS)) == 118
    assert list(analysis.DOG_BREEDS) == sorted(analysis.DOG_BREEDS)
    assert (analysis.DOG_BREEDS[0], analysis.DOG_BREEDS[-1]) == ("n02085620", "n02113978")
    assert analysis.fine_group("n02099849") == "dog breeds" and analysis.fine_group("n03594734") is None
    cats = analysis.GEIRHOS_CATEGORIES
    # Sizes of the <category>_indices lists of rgeirhos/texture-vs-shape code/helper/human_categories.py.
    sizes = {"airplane": 1, "bear": 4, "bicycle": 2, "bird": 49, "boat": 5, "bottle": 7, "car": 3, "cat": 6,
             "chair": 4, "clock": 3, "dog": 109, "elephant": 2, "keyboard": 2, "knife": 1, "oven": 1, "truck": 8}
    assert {c: len(w) for c, w in cats.items()} == sizes
    every = [w for wnids in cats.values() for w in wnids]
    assert len(every) == len(set(every)) == 207
    # dog_indices are 152..268 less 192 204 227 242 251 258 260 264; breed i is ImageNet class 151 + i.
    dog_indices = [i for i in range(152, 269) if i not in (192, 204, 227, 242, 251, 258, 260, 264)]
    assert cats["dog"] == tuple(analysis.DOG_BREEDS[i - 151] for i in dog_indices)
    assert cats["airplane"] == ("n02690373",) and cats["oven"] == ("n04111531",) and cats["knife"] == ("n03041632",)
    # The claim the command's warning rests on: an ImageNet-100 model covers 7 of the 16 categories.
    covered = analysis.covered_categories(IMAGENET100, cats)
    assert sorted(covered) == ["bird", "cat", "chair", "dog", "keyboard", "oven", "truck"]


def test_pixel_statistics_reads_colour_and_orientation():
    x = torch.zeros(2, 3, 32, 32)
    x[0, :, :, ::4] = 1.0  # vertical stripes: gradients along x (orientation bin 0)
    x[1, :, ::4, :] = 1.0  # horizontal stripes: gradients along y (orientation bin 4)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (evaluate.IMAGENET_MEAN, evaluate.IMAGENET_STD))
    normalised = (x - mean) / std
    out = analysis.PixelStatistics()(normalised)
    assert out.shape == (2, analysis.PixelStatistics.DIM) == (2, 48)
    colour = out[:, :24].view(2, 3, 8)
    assert torch.allclose(colour.sum(dim=2), torch.ones(2, 3))
    assert torch.allclose(colour[:, :, 7], torch.full((2, 3), 0.25))  # a quarter of the pixels are white
    assert torch.allclose(colour[:, :, 0], torch.full((2, 3), 0.75))
    fine = out[:, 24:32]
    assert fine[0].argmax() == 0 and fine[1].argmax() == 4 and fine[0, 4] < 1e-6 and fine[1, 0] < 1e-6  # round-off only


def test_held_out_split_is_by_key_alone():
    keys = [f"n0000000{i % 7}_{i}" for i in range(5000)]
    held = [analysis.is_held_out(k, 0.2) for k in keys]
    assert 0.18 < np.mean(held) < 0.22
    assert held == [analysis.is_held_out(k, 0.2) for k in keys]
    assert all(analysis.is_held_out(k, 0.3) for k in keys if analysis.is_held_out(k, 0.1))  # nested fractions


def test_geirhos_decision_rule_and_shape_bias():
    head_classes = ["n02123045", "n02123159", "n02099849", "n03085013", "n03594734"]
    covered = analysis.covered_categories(head_classes, analysis.GEIRHOS_CATEGORIES)
    assert covered == {"cat": [0, 1], "dog": [2], "keyboard": [3]}  # jean is in no category
    probs = torch.tensor([[0.30, 0.00, 0.25, 0.05, 0.40],   # cat mean 0.15 < dog 0.25: the mean, not the max, decides
                          [0.50, 0.30, 0.10, 0.05, 0.05],   # cat 0.40
                          [0.10, 0.10, 0.10, 0.60, 0.10],   # keyboard
                          [0.90, 0.02, 0.03, 0.03, 0.02]])  # cat
    decisions = analysis.category_decisions(probs, covered)
    assert decisions == ["dog", "cat", "keyboard", "cat"]
    cues = [("dog", "keyboard"), ("keyboard", "cat"), ("cat", "dog"), ("elephant", "cat")]
    outcomes = [analysis.cue_outcome(d, s, t, list(covered)) for d, (s, t) in zip(decisions, cues)]
    assert outcomes == ["shape", "texture", "other", "uncovered"]
    assert analysis.shape_bias(outcomes) == 0.5
    assert analysis.shape_bias(["other", "uncovered"]) is None
    assert analysis.shape_bias(["shape"] * 3 + ["texture"]) == 0.75


def test_edge_mask_and_cue_conflict_image():
    a = np.zeros((224, 224, 3), np.uint8)
    a[60:160, 60:160] = 255
    mask = analysis.edge_mask(Image.fromarray(a))
    assert mask[60, 110] and mask[159, 110] and mask[110, 52]  # along the square's outline, dilated
    assert not mask[110, 110] and not mask[5, 5] and 0.05 < mask.mean() < 0.5  # not its inside nor the far background
    b = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    image, mask2 = analysis.cue_conflict_image(Image.fromarray(a), Image.fromarray(b))
    out = np.asarray(image)
    assert (mask2 == mask).all() and (out[mask] == b[mask]).all() and (out[~mask] == a[~mask]).all()


# --------------------------------------------------------------------------- texture-classes


def test_texture_classes_with_released_checkpoint(shards, ckpt, tmp_path):
    out = tmp_path / "out"
    result = invoke("texture-classes", "--shards", shards, "--checkpoint", ckpt, "--image-size", SIZE,
                    "--holdout", 0.35, "--epochs", 20, "--batch-size", 8, "--workers", 0, "--top", 2, "--out-dir", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "texture-classes.json").read_text())
    assert all((out / f"texture-classes.{ext}").stat().st_size > 0 for ext in ("md", "json", "png"))
    assert report["features"]["kind"] == "checkpoint" and f"frozen resnet18 backbone of {ckpt}" in result.output
    assert report["features"]["image_size"] == SIZE and report["real"]["source"].startswith("the shards' source photos")

    # Direct computation: every sample, one at a time, through the backbone and the saved probe.
    classes = contract.load_manifest(shards)["classes"]
    assert classes == sorted(CLASSES)
    samples = list(contract.iter_samples(shards, "train"))
    held = [s for s in samples if analysis.is_held_out(s.key, 0.35)]
    assert 0 < len(held) < len(samples) and report["texture_held_out"] == len(held)
    assert report["texture_train"] == len(samples) - len(held)
    probe, info = evaluate.load_linear_head(out / "texture-probe.pt")
    assert info["classes"] == classes and info["image_size"] == SIZE
    backbone, _ = checkpoint.load_backbone(ckpt)
    tex_correct, tex_total = direct_counts(backbone, probe, [(s.texture, s.cls) for s in held], SIZE, len(classes))
    real_correct, real_total = direct_counts(backbone, probe, [(s.source(), s.cls) for s in held], SIZE, len(classes))
    rows = report["classes"]
    assert [r["wnid"] for r in rows] == classes
    assert [(r["texture_correct"], r["texture_n"]) for r in rows] == list(zip(tex_correct, tex_total))
    assert [(r["real_correct"], r["real_n"]) for r in rows] == list(zip(real_correct, real_total))
    for r in rows:
        assert r["texture_acc"] == (r["texture_correct"] / r["texture_n"] if r["texture_n"] else None)
        assert r["group"] == ("dog breeds" if r["wnid"] in ("n02085620", "n02099849") else "rest")
    assert report["top1"]["texture_held_out"] == pytest.approx(sum(tex_correct) / len(held))
    assert report["top1"]["real"] == pytest.approx(sum(real_correct) / len(held))

    # Fine vs rest: macro means over the classes with held-out textures.
    for group in ("dog breeds", "rest"):
        accs = [r["texture_acc"] for r in rows if r["group"] == group and r["texture_acc"] is not None]
        assert report["groups"][group]["mean_texture_acc"] == pytest.approx(np.mean(accs))
    assert "dog breeds (n02084071): mean texture accuracy" in report["fine_vs_rest"]
    tested = [r for r in rows if r["texture_acc"] is not None]
    most = sorted(tested, key=lambda r: (-r["texture_acc"], r["wnid"]))
    least = sorted(tested, key=lambda r: (r["texture_acc"], r["wnid"]))
    assert report["most_recognisable"] == [r["wnid"] for r in most[:2]]
    assert report["least_recognisable"] == [r["wnid"] for r in least[:2]]
    md = (out / "texture-classes.md").read_text()
    assert "## Fine-grained classes vs the rest" in md and all(w in md for w in classes)


def test_texture_classes_default_pixels_with_val_tree(shards, tmp_path):
    val = write_tree(tmp_path / "val", 2, offset=5, classes={**CLASSES, "n09999999": "coffee.png"})
    out = tmp_path / "out"
    result = invoke("texture-classes", "--shards", shards, "--val", val, "--epochs", 20, "--batch-size", 8,
                    "--workers", 0, "--image-size", SIZE, "--out-dir", out)
    assert result.exit_code == 0, result.output
    assert "features: pixels: colour histograms" in result.output and "n09999999" in result.output
    report = json.loads((out / "texture-classes.json").read_text())
    assert report["features"]["kind"] == "pixels" and report["real"]["dropped_classes"] == ["n09999999"]
    assert report["real"]["samples"] == 2 * len(CLASSES)
    probe, info = evaluate.load_linear_head(out / "texture-probe.pt")
    assert info["arch"] == "pixels" and probe.in_features == analysis.PixelStatistics.DIM
    classes = sorted(CLASSES)
    val_images = [(Image.open(p).convert("RGB"), classes.index(p.parent.name))
                  for p in sorted(val.glob("*/*.png")) if p.parent.name in CLASSES]
    correct, total = direct_counts(analysis.PixelStatistics(), probe, val_images, SIZE, len(classes))
    assert [(r["real_correct"], r["real_n"]) for r in report["classes"]] == list(zip(correct, total))


def test_texture_classes_errors(shards, ckpt, tmp_path):
    result = invoke("texture-classes", "--shards", shards, "--checkpoint", ckpt, "--features", "pixels")
    assert result.exit_code == 2 and "not both" in result.output
    result = invoke("texture-classes", "--shards", tmp_path, "--out-dir", tmp_path / "o")
    assert result.exit_code == 1 and "manifest.json not found" in result.output
    result = invoke("texture-classes", "--shards", shards, "--checkpoint", tmp_path / "missing.pt")
    assert result.exit_code == 1 and "not found" in result.output


# --------------------------------------------------------------------------- shape-bias


def test_shape_bias_on_cue_conflict_dir(tree, ckpt, head, tmp_path):
    """Images named as in texture-vs-shape; pixels from the shape's or the texture's photo so both cues win some."""
    cue = tmp_path / "cue"
    photo_of = {"cat": CLASSES["n02123045"], "dog": CLASSES["n02099849"], "keyboard": CLASSES["n03085013"],
                "elephant": "horse.png", "bear": "coffee.png"}
    files = {"cat/cat1-dog1.png": "cat", "cat/cat2-keyboard1.png": "keyboard", "dog/dog1-cat2.png": "dog",
             "dog/dog2-keyboard2.png": "keyboard", "keyboard/keyboard1-cat1.png": "keyboard",
             "keyboard/keyboard2-dog1.png": "dog", "cat/cat3-cat1.png": "cat",
             "elephant/elephant1-cat1.png": "elephant", "cat/cat4-bear1.png": "cat",
             "cat/cat5-unicorn1.png": "cat", "cat/readme.png": "cat"}
    for name, content in files.items():
        (cue / name).parent.mkdir(parents=True, exist_ok=True)
        (cue / name).write_bytes(encode(photo(photo_of[content], (224, 224))))
    (cue / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    result = invoke("shape-bias", "--checkpoint", ckpt, "--linear-head", head, "--cue-conflict", cue,
                    "--workers", 0, "--out-dir", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "shape-bias.json").read_text())
    assert all((out / f"shape-bias.{ext}").stat().st_size > 0 for ext in ("md", "json", "png"))
    assert report["covered_categories"] == {"cat": ["n02123045"], "dog": ["n02099849"], "keyboard": ["n03085013"]}
    assert (report["categories_covered"], report["categories_total"]) == (3, 16)
    assert "covers only 3 of the 16 categories" in result.output and "weak number" in result.output
    assert report["left_out"] == {"same category": 1, "unparsable name": 1, "unknown category": 1}
    assert "cat/cat3-cat1.png" not in [d["file"] for d in report["decisions"]]
    assert report["image_size"] == SIZE  # from the head

    # Direct computation: softmax over the head, mean per covered category, argmax, outcome, count.
    backbone, _ = checkpoint.load_backbone(ckpt)
    layer, info = evaluate.load_linear_head(head)
    rows = report["decisions"]
    probs = direct_predictions(backbone, layer, [Image.open(cue / d["file"]) for d in rows], SIZE)
    expected = []
    for p, d in zip(probs, rows):
        scores = {c: float(np.mean([float(p[i]) for i, w in enumerate(info["classes"]) if w in wnids]))
                  for c, wnids in analysis.GEIRHOS_CATEGORIES.items() if any(w in wnids for w in info["classes"])}
        decision = max(scores, key=scores.get)
        assert d["decision"] == decision
        cues_covered = d["shape"] in scores and d["texture"] in scores
        expected.append("uncovered" if not cues_covered else "shape" if decision == d["shape"]
                        else "texture" if decision == d["texture"] else "other")
    assert [d["outcome"] for d in rows] == expected
    counts = {k: expected.count(k) for k in ("shape", "texture", "other", "uncovered")}
    assert report["counts"] == counts and counts["uncovered"] == 2 and sum(counts.values()) == 8
    assert counts["shape"] > 0 and counts["texture"] > 0  # the head follows the pixels' photo
    assert report["shape_bias"] == pytest.approx(counts["shape"] / (counts["shape"] + counts["texture"]))


def test_shape_bias_from_shards(shards, ckpt, head, tmp_path):
    out = tmp_path / "out"
    result = invoke("shape-bias", "--checkpoint", ckpt, "--linear-head", head, "--from-shards", shards,
                    "--n", 8, "--seed", 3, "--workers", 0, "--out-dir", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "shape-bias.json").read_text())
    made_dir = out / "cue-conflict-from-shards"
    assert report["mode"] == "shard-classes"
    assert report["categories_total"] == len(CLASSES) == report["categories_covered"]
    assert len(report["made"]) == 8 and (made_dir / "contact-sheet.png").stat().st_size > 0
    samples = {s.key: s for s in contract.iter_samples(shards, "train")}
    for rec in report["made"]:
        a, b = samples[rec["shape_key"]], samples[rec["texture_key"]]
        assert rec["shape"] == a.meta["wnid"] != rec["texture"] == b.meta["wnid"]
        assert rec["file"].startswith(f"{rec['shape']}/")  # ImageFolder-like: by shape class
        made = np.asarray(Image.open(made_dir / rec["file"]))
        a_view, b_pixels = np.asarray(analysis.centre_view(a.source(), 224)), np.asarray(b.texture)
        mask = analysis.edge_mask(Image.fromarray(a_view))
        assert 0.05 < mask.mean() < 0.95 and rec["mask_fraction"] == round(float(mask.mean()), 4)
        assert (made[mask] == b_pixels[mask]).all() and (made[~mask] == a_view[~mask]).all()
        assert (made[mask] != a_view[mask]).any()
    # Decisions over the head's own classes, straight from the written images.
    backbone, _ = checkpoint.load_backbone(ckpt)
    layer, info = evaluate.load_linear_head(head)
    rows = report["decisions"]
    probs = direct_predictions(backbone, layer, [Image.open(made_dir / d["file"]) for d in rows], SIZE)
    decisions = [info["classes"][int(p.argmax())] for p in probs]
    assert [d["decision"] for d in rows] == decisions
    outcomes = ["shape" if dec == d["shape"] else "texture" if dec == d["texture"] else "other"
                for dec, d in zip(decisions, rows)]
    assert [d["outcome"] for d in rows] == outcomes
    assert report["counts"] == {"shape": outcomes.count("shape"), "texture": outcomes.count("texture"),
                                "other": outcomes.count("other"), "uncovered": 0}
    assert report["shape_bias"] == analysis.shape_bias(outcomes)


def test_shape_bias_errors(shards, ckpt, head, tmp_path):
    result = invoke("shape-bias", "--checkpoint", ckpt, "--linear-head", head)
    assert result.exit_code == 2 and "exactly one of --cue-conflict" in result.output
    pixels_head = tmp_path / "pixels-head.pt"
    evaluate.save_linear_head(pixels_head, torch.nn.Linear(analysis.PixelStatistics.DIM, 2), ["n02123045", "n02099849"],
                              "pixels", SIZE, "pixels")
    result = invoke("shape-bias", "--checkpoint", ckpt, "--linear-head", pixels_head, "--from-shards", shards,
                    "--n", 2, "--workers", 0, "--out-dir", tmp_path / "o")
    assert result.exit_code == 1 and "the head takes 48 features, the backbone gives 512" in result.output
    result = invoke("shape-bias", "--checkpoint", ckpt, "--linear-head", tmp_path / "nothing.pt",
                    "--from-shards", shards)
    assert result.exit_code == 1 and "not found" in result.output
