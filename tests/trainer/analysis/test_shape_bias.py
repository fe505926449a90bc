"""nsneg-analyze shape-bias: Geirhos et al.'s decision rule, and the command end to end on a
texture-vs-shape style folder and on cue-conflict images made from a real shard set."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nsneg.datasets_manifest.format.sample_reader import iter_samples
from nsneg.trainer import checkpoint
from nsneg.trainer.analysis import categories, cue_conflict, shape_bias, texture_classes
from nsneg.trainer.eval import probes
from nsneg_testing import encode, keep_sample, photo
from nsneg_testing.analysis import CLASSES, SIZE, direct_predictions


def shape_bias_command(invoke, ckpt, head, out, *args):
    """``nsneg-analyze shape-bias --checkpoint CKPT --linear-head HEAD ARGS --out-dir OUT``, no
    loader workers."""
    common = ["--checkpoint", ckpt, "--linear-head", head, "--workers", 0]
    return invoke("shape-bias", *common, *args, "--out-dir", out)


def test_geirhos_decision_rule_and_shape_bias():
    head_classes = ["n02123045", "n02123159", "n02099849", "n03085013", "n03594734"]
    covered = categories.covered_categories(head_classes, categories.GEIRHOS_CATEGORIES)
    assert covered == {"cat": [0, 1], "dog": [2], "keyboard": [3]}  # jean is in no category
    probs = torch.tensor(
        [
            [
                0.30,
                0.00,
                0.25,
                0.05,
                0.40,
            ],  # cat mean 0.15 < dog 0.25: the mean, not the max, decides
            [0.50, 0.30, 0.10, 0.05, 0.05],  # cat 0.40
            [0.10, 0.10, 0.10, 0.60, 0.10],  # keyboard
            [0.90, 0.02, 0.03, 0.03, 0.02],
        ]
    )  # cat
    decisions = shape_bias.category_decisions(probs, covered)
    assert decisions == ["dog", "cat", "keyboard", "cat"]
    cues = [("dog", "keyboard"), ("keyboard", "cat"), ("cat", "dog"), ("elephant", "cat")]
    outcomes = [
        shape_bias.cue_outcome(d, s, t, list(covered)) for d, (s, t) in zip(decisions, cues)
    ]
    assert outcomes == ["shape", "texture", "other", "uncovered"]
    assert shape_bias.shape_bias(outcomes) == 0.5
    assert shape_bias.shape_bias(["other", "uncovered"]) is None
    assert shape_bias.shape_bias(["shape"] * 3 + ["texture"]) == 0.75


# --------------------------------------------------------------------------- shape-bias


@pytest.mark.slow  # a whole shape-bias report
def test_shape_bias_on_cue_conflict_dir(invoke, tree, ckpt, head, tmp_path):
    """Images named as in texture-vs-shape; pixels from the shape's or the texture's photo so both cues win some."""
    cue = tmp_path / "cue"
    photo_of = {
        "cat": CLASSES["n02123045"],
        "dog": CLASSES["n02099849"],
        "keyboard": CLASSES["n03085013"],
        "elephant": "horse.png",
        "bear": "coffee.png",
    }
    files = {
        "cat/cat1-dog1.png": "cat",
        "cat/cat2-keyboard1.png": "keyboard",
        "dog/dog1-cat2.png": "dog",
        "dog/dog2-keyboard2.png": "keyboard",
        "keyboard/keyboard1-cat1.png": "keyboard",
        "keyboard/keyboard2-dog1.png": "dog",
        "cat/cat3-cat1.png": "cat",
        "elephant/elephant1-cat1.png": "elephant",
        "cat/cat4-bear1.png": "cat",
        "cat/cat5-unicorn1.png": "cat",
        "cat/readme.png": "cat",
    }
    for name, content in files.items():
        (cue / name).parent.mkdir(parents=True, exist_ok=True)
        (cue / name).write_bytes(encode(photo(photo_of[content], (224, 224))))
    (cue / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    result = shape_bias_command(invoke, ckpt, head, out, "--cue-conflict", cue)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "shape-bias.json").read_text())
    assert all((out / f"shape-bias.{ext}").stat().st_size > 0 for ext in ("md", "json", "png"))
    assert report["covered_categories"] == {
        "cat": ["n02123045"],
        "dog": ["n02099849"],
        "keyboard": ["n03085013"],
    }
    assert (report["categories_covered"], report["categories_total"]) == (3, 16)
    assert "covers only 3 of the 16 categories" in result.output and "weak number" in result.output
    assert report["left_out"] == {"same category": 1, "unparsable name": 1, "unknown category": 1}
    assert "cat/cat3-cat1.png" not in [d["file"] for d in report["decisions"]]
    assert report["image_size"] == SIZE  # from the head

    # Direct computation: softmax over the head, mean per covered category, argmax, outcome, count.
    backbone, _ = checkpoint.load_backbone(ckpt)
    layer, info = probes.load_linear_head(head)
    rows = report["decisions"]
    probs = direct_predictions(backbone, layer, [Image.open(cue / d["file"]) for d in rows], SIZE)
    expected = []
    for p, d in zip(probs, rows):
        scores = {
            c: float(np.mean([float(p[i]) for i, w in enumerate(info["classes"]) if w in wnids]))
            for c, wnids in categories.GEIRHOS_CATEGORIES.items()
            if any(w in wnids for w in info["classes"])
        }
        decision = max(scores, key=scores.get)
        assert d["decision"] == decision
        cues_covered = d["shape"] in scores and d["texture"] in scores
        expected.append(
            "uncovered"
            if not cues_covered
            else "shape"
            if decision == d["shape"]
            else "texture"
            if decision == d["texture"]
            else "other"
        )
    assert [d["outcome"] for d in rows] == expected
    counts = {k: expected.count(k) for k in ("shape", "texture", "other", "uncovered")}
    assert report["counts"] == counts and counts["uncovered"] == 2 and sum(counts.values()) == 8
    assert counts["shape"] > 0 and counts["texture"] > 0  # the head follows the pixels' photo
    assert report["shape_bias"] == pytest.approx(
        counts["shape"] / (counts["shape"] + counts["texture"])
    )


def test_shape_bias_from_shards(invoke, shards, ckpt, head, tmp_path, tmp_path_factory):
    out = tmp_path / "out"
    result = shape_bias_command(
        invoke, ckpt, head, out, "--from-shards", shards, "--n", 8, "--seed", 3
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "shape-bias.json").read_text())
    made_dir = out / "cue-conflict-from-shards"
    assert report["mode"] == "shard-classes"
    assert report["categories_total"] == len(CLASSES) == report["categories_covered"]
    assert len(report["made"]) == 8 and (made_dir / "contact-sheet.png").stat().st_size > 0
    samples = {s.key: s for s in iter_samples(shards, "train")}
    for rec in report["made"]:
        a, b = samples[rec["shape_key"]], samples[rec["texture_key"]]
        assert rec["shape"] == a.meta["wnid"] != rec["texture"] == b.meta["wnid"]
        assert rec["file"].startswith(f"{rec['shape']}/")  # ImageFolder-like: by shape class
        made = np.asarray(Image.open(made_dir / rec["file"]))
        a_view, b_pixels = (
            np.asarray(cue_conflict.centre_view(a.source(), 224)),
            np.asarray(b.texture),
        )
        mask = cue_conflict.edge_mask(Image.fromarray(a_view))
        assert 0.05 < mask.mean() < 0.95 and rec["mask_fraction"] == round(float(mask.mean()), 4)
        assert (made[mask] == b_pixels[mask]).all() and (made[~mask] == a_view[~mask]).all()
        assert (made[mask] != a_view[mask]).any()
    # Decisions over the head's own classes, straight from the written images.
    backbone, _ = checkpoint.load_backbone(ckpt)
    layer, info = probes.load_linear_head(head)
    rows = report["decisions"]
    probs = direct_predictions(
        backbone, layer, [Image.open(made_dir / d["file"]) for d in rows], SIZE
    )
    decisions = [info["classes"][int(p.argmax())] for p in probs]
    assert [d["decision"] for d in rows] == decisions
    outcomes = [
        "shape" if dec == d["shape"] else "texture" if dec == d["texture"] else "other"
        for dec, d in zip(decisions, rows)
    ]
    assert [d["outcome"] for d in rows] == outcomes
    assert report["counts"] == {
        "shape": outcomes.count("shape"),
        "texture": outcomes.count("texture"),
        "other": outcomes.count("other"),
        "uncovered": 0,
    }
    assert report["shape_bias"] == shape_bias.shape_bias(outcomes)
    for name in ("shape-bias.md", "shape-bias.png"):
        keep_sample(out / name, tmp_path_factory.getbasetemp())
    keep_sample(
        made_dir / "contact-sheet.png",
        tmp_path_factory.getbasetemp(),
        "cue-conflict-contact-sheet.png",
    )


def test_shape_bias_errors(invoke, shards, ckpt, head, tmp_path):
    result = invoke("shape-bias", "--checkpoint", ckpt, "--linear-head", head)
    assert result.exit_code == 2 and "exactly one of --cue-conflict" in result.output
    pixels_head = tmp_path / "pixels-head.pt"
    probes.save_linear_head(
        pixels_head,
        torch.nn.Linear(texture_classes.PixelStatistics.DIM, 2),
        ["n02123045", "n02099849"],
        "pixels",
        SIZE,
        "pixels",
    )
    result = shape_bias_command(
        invoke, ckpt, pixels_head, tmp_path / "o", "--from-shards", shards, "--n", 2
    )
    assert (
        result.exit_code == 1
        and "the head takes 48 features, the backbone gives 512" in result.output
    )
    result = shape_bias_command(
        invoke, ckpt, tmp_path / "nothing.pt", tmp_path / "o", "--from-shards", shards
    )
    assert result.exit_code == 1 and "not found" in result.output
