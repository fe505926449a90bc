"""The miniature shape-vs-texture experiment: its data generator, and ``--quick`` end to end.

The smoke test checks plumbing and the report's form only -- never which variant wins.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import mini_repro  # noqa: E402
import shapes  # noqa: E402

ONE_EACH = {split: 1 for split in shapes.SPLITS}


def test_generator_is_reproducible_from_its_seed(tmp_path):
    a = shapes.generate(tmp_path / "a", ONE_EACH, seed=3)
    b = shapes.generate(tmp_path / "b", ONE_EACH, seed=3)
    c = shapes.generate(tmp_path / "c", ONE_EACH, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_every_split_has_every_class_at_the_image_size(tmp_path):
    root = shapes.generate(tmp_path, {split: 2 for split in shapes.SPLITS}, seed=0)
    for split in shapes.SPLITS:
        assert sorted(d.name for d in (root / split).iterdir()) == sorted(shapes.CLASSES)
        for d in (root / split).iterdir():
            images = sorted(d.glob("*.png"))
            assert len(images) == 2
            for path in images:
                with Image.open(path) as img:
                    assert img.size == (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE) and img.mode == "RGB"
    assert shapes.IMAGE_SIZE >= 96  # the pipeline's crop size


@pytest.mark.parametrize("cls", range(len(shapes.CLASSES)))
def test_sketch_is_a_black_outline_on_white(cls):
    img = shapes.render("sketch", cls, shapes.image_rng(0, "sketch", cls, 0))
    mask = shapes.shape_mask(shapes.CLASSES[cls], shapes.IMAGE_SIZE, shapes.image_rng(0, "sketch", cls, 0))
    assert set(np.unique(img)) <= {0, 255}  # no texture, no shading: line or paper
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    dark = img[..., 0] == 0
    assert 0 < dark.mean() < 0.15
    inside = Image.fromarray((mask > 0.5).astype(np.uint8) * 255)
    eroded = np.asarray(inside.filter(ImageFilter.MinFilter(7))) > 0
    assert eroded.any() and not dark[eroded].any()  # the inside of the shape is empty paper
    assert not dark[mask == 0].mean() > 0.05  # and the line hugs the boundary


def _families_painted(monkeypatch, split: str, n: int = 12) -> set[str]:
    seen: list[str] = []
    original = shapes.paint

    def spy(spec, size, rng):
        seen.append(spec.family)
        return original(spec, size, rng)

    monkeypatch.setattr(shapes, "paint", spy)
    for i in range(n):
        shapes.render(split, i % len(shapes.CLASSES), shapes.image_rng(0, split, i % len(shapes.CLASSES), i))
    return set(seen)


def test_unseen_texture_families_are_never_used_in_training(monkeypatch):
    assert not set(shapes.TRAIN_FAMILIES) & set(shapes.UNSEEN_FAMILIES)
    for split in ("train", "test", "cue_conflict"):
        assert _families_painted(monkeypatch, split, n=40) <= set(shapes.TRAIN_FAMILIES), split
    assert _families_painted(monkeypatch, "unseen_textures") <= set(shapes.UNSEEN_FAMILIES)


@pytest.mark.parametrize("family", shapes.TRAIN_FAMILIES + shapes.UNSEEN_FAMILIES)
def test_every_family_is_a_valid_pattern(family):
    p = shapes.pattern(family, 64, np.random.default_rng(0))
    assert p.shape == (64, 64) and p.min() >= 0 and p.max() <= 1 and p.std() > 0.05


def test_cue_conflict_wears_another_class_texture(monkeypatch):
    chosen: list[int] = []
    original = shapes.class_texture

    def spy(cls, rng):
        chosen.append(cls)
        return original(cls, rng)

    monkeypatch.setattr(shapes, "class_texture", spy)
    for cls in range(len(shapes.CLASSES)):
        chosen.clear()
        shapes.render("cue_conflict", cls, shapes.image_rng(0, "cue_conflict", cls, 0))
        assert len(chosen) == 1 and chosen[0] != cls


def test_quick_run_end_to_end(tmp_path, ray_session):
    from click.testing import CliRunner

    result = CliRunner().invoke(mini_repro.main, ["--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "wall time" in result.output
    for name in ("results.md", "results.json", "results.png"):
        assert (tmp_path / name).stat().st_size > 0
    with Image.open(tmp_path / "results.png") as img:
        assert img.format == "PNG"
    # the real pipeline made the train split's textures
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] == mini_repro.QUICK.per_class["train"] * len(shapes.CLASSES)

    report = json.loads((tmp_path / "results.json").read_text())
    names = [v.name for v in mini_repro.variants(mini_repro.QUICK)]
    assert report["quick"] is True and list(report["summary"]) == names
    assert {r["kind"] for r in report["runs"]} == {"none", "texture", "patch", "texture+patch"}
    assert len(report["runs"]) == len(names) * len(mini_repro.QUICK.seeds)
    for row in report["summary"].values():
        assert set(mini_repro.EVAL_SETS) <= set(row)
        for cell in row.values():
            assert 0 <= cell["mean"] <= 100 and cell["std"] >= 0

    lines = (tmp_path / "results.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| variant"))
    assert [c.strip() for c in lines[header].strip("|").split("|")][1:-1] == list(mini_repro.EVAL_SETS)
    rows = lines[header + 2 : header + 2 + len(names)]
    assert [r.split("|")[1].strip() for r in rows] == names
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")][1:]
        assert len(cells) == len(mini_repro.EVAL_SETS) + 1
        for cell in cells:
            mean, std = (float(x) for x in cell.split("±"))
            assert 0 <= mean <= 100 and std >= 0
