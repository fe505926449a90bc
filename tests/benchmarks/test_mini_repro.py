"""The miniature shape-vs-texture experiment: its world, statistics, gate, and ``--quick`` end to end.

The smoke test checks plumbing and the report's form only -- never which variant wins.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from mini_repro import protocol, report, run
from mini_repro import world as shapes
from mini_repro.__main__ import main

ONE_EACH = {split: 1 for split in shapes.SPLITS}
WORLD = protocol.FULL.world


def test_generator_is_reproducible_from_its_seed(tmp_path):
    a = shapes.generate(tmp_path / "a", WORLD, ONE_EACH, seed=3)
    b = shapes.generate(tmp_path / "b", WORLD, ONE_EACH, seed=3)
    c = shapes.generate(tmp_path / "c", WORLD, ONE_EACH, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_every_split_has_every_class_at_the_image_size(tmp_path):
    root = shapes.generate(tmp_path, WORLD, {split: 2 for split in shapes.SPLITS}, seed=0)
    for split in shapes.SPLITS:
        assert sorted(d.name for d in (root / split).iterdir()) == sorted(shapes.CLASSES)
        for d in (root / split).iterdir():
            images = sorted(d.glob("*.png"))
            assert len(images) == 2
            for path in images:
                with Image.open(path) as img:
                    assert img.size == (WORLD.image_size, WORLD.image_size) and img.mode == "RGB"
    assert WORLD.image_size >= 96  # the pipeline's crop size


@pytest.mark.parametrize("cls", range(len(shapes.CLASSES)))
def test_sketch_is_a_black_outline_on_white(cls):
    img, texture_class = shapes.render(WORLD, "sketch", cls, shapes.image_rng(0, "sketch", cls, 0))
    mask = shapes.shape_mask(
        shapes.CLASSES[cls],
        WORLD.image_size,
        shapes.image_rng(0, "sketch", cls, 0),
        WORLD.shape_radius,
    )
    assert texture_class is None
    assert set(np.unique(img)) <= {0, 255}  # no texture, no shading: line or paper
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    dark = img[..., 0] == 0
    assert 0 < dark.mean() < 0.2
    inside = Image.fromarray((mask > 0.5).astype(np.uint8) * 255)
    k = 2 * WORLD.outline_width + 1
    eroded = np.asarray(inside.filter(ImageFilter.MinFilter(k))) > 0
    assert eroded.any() and not dark[eroded].any()  # the inside of the shape is empty paper
    dilated = np.asarray(inside.filter(ImageFilter.MaxFilter(k))) > 0
    assert not dark[~dilated].any()  # and the line hugs the boundary


def _families_painted(monkeypatch, split: str, n: int = 12) -> set[str]:
    seen: list[str] = []
    original = shapes.paint

    def spy(spec, size, rng, contrast=1.0):
        seen.append(spec.family)
        return original(spec, size, rng, contrast)

    monkeypatch.setattr(shapes, "paint", spy)
    for i in range(n):
        shapes.render(
            WORLD,
            split,
            i % len(shapes.CLASSES),
            shapes.image_rng(0, split, i % len(shapes.CLASSES), i),
        )
    return set(seen)


def test_unseen_texture_families_are_never_used_in_training(monkeypatch):
    assert not set(shapes.TRAIN_FAMILIES) & set(shapes.UNSEEN_FAMILIES)
    for split in ("pretrain", "train", "test", "cue_conflict"):
        assert _families_painted(monkeypatch, split, n=40) <= set(shapes.TRAIN_FAMILIES), split
    assert _families_painted(monkeypatch, "unseen_textures") <= set(shapes.UNSEEN_FAMILIES)


@pytest.mark.parametrize("family", shapes.TRAIN_FAMILIES + shapes.UNSEEN_FAMILIES)
def test_every_family_is_a_valid_pattern(family):
    p = shapes.pattern(family, 64, np.random.default_rng(0))
    assert p.shape == (64, 64) and p.min() >= 0 and p.max() <= 1 and p.std() > 0.05


def test_cue_conflict_wears_another_class_texture_named_in_the_file(monkeypatch, tmp_path):
    chosen: list[int] = []
    original = shapes.class_texture

    def spy(cls, rng):
        chosen.append(cls)
        return original(cls, rng)

    monkeypatch.setattr(shapes, "class_texture", spy)
    for cls in range(len(shapes.CLASSES)):
        chosen.clear()
        _, texture_class = shapes.render(
            WORLD, "cue_conflict", cls, shapes.image_rng(0, "cue_conflict", cls, 0)
        )
        assert chosen == [texture_class] and texture_class != cls
    monkeypatch.undo()
    root = shapes.generate(tmp_path, WORLD, {"cue_conflict": 2}, seed=0)
    for path in (root / "cue_conflict").rglob("*.png"):
        cls = shapes.CLASSES.index(path.parent.name)
        _, texture_class = shapes.render(
            WORLD,
            "cue_conflict",
            cls,
            shapes.image_rng(0, "cue_conflict", cls, int(path.stem.split("_")[3])),
        )
        assert shapes.texture_class_of(path) == texture_class != cls
    with pytest.raises(ValueError, match="not a cue-conflict image"):
        shapes.texture_class_of("test_disk_0001.png")


def test_texture_contrast_scales_the_pattern_around_its_mean():
    spec = shapes.TextureSpec("stripes", ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0)))
    full = shapes.paint(spec, 32, np.random.default_rng(0), 1.0)
    half = shapes.paint(spec, 32, np.random.default_rng(0), 0.5)
    np.testing.assert_allclose(half.mean(axis=(0, 1)), full.mean(axis=(0, 1)), atol=1e-6)
    np.testing.assert_allclose(half.std(axis=(0, 1)), 0.5 * full.std(axis=(0, 1)), atol=1e-6)
    with pytest.raises(ValueError):
        shapes.World(texture_contrast=0)


def test_background_contrast_and_colour_change_only_the_background():
    rng = lambda: shapes.image_rng(0, "test", 3, 0)  # noqa: E731
    textured_world = dataclasses.replace(WORLD, background_colour=None)
    flat_world = dataclasses.replace(textured_world, background_contrast=0.0)
    textured, _ = shapes.render(textured_world, "test", 3, rng())
    flat, _ = shapes.render(flat_world, "test", 3, rng())
    mask = shapes.shape_mask(shapes.CLASSES[3], WORLD.image_size, rng(), WORLD.shape_radius)
    inside, outside = mask > 0.99, mask < 0.01
    # The same draw: the shape is untouched, the background is one flat colour (its mean).
    np.testing.assert_array_equal(flat[inside], textured[inside])
    assert flat[outside].std(axis=0).max() < 1.0 < textured[outside].std(axis=0).max()
    grey, _ = shapes.render(
        dataclasses.replace(textured_world, background_colour=(0.5, 0.5, 0.5)), "test", 3, rng()
    )
    np.testing.assert_array_equal(grey[inside], textured[inside])
    assert (grey[outside] == 128).all()
    with pytest.raises(ValueError, match="background_contrast"):
        shapes.World(background_contrast=1.5)
    with pytest.raises(ValueError, match="background_colour"):
        shapes.World(background_colour=(0.5, 2.0, 0.5))


def test_gate_search_rows_are_plotted_with_their_numbers(tmp_path, monkeypatch):
    drawn = {}

    def keep(fig, path, dpi):
        drawn["axes"] = fig.axes[0]
        fig.savefig(path, dpi=dpi)

    monkeypatch.setattr(report, "save_png", keep)
    report.plot_gate_search(list(protocol.GATE_SEARCH), tmp_path / "search.png")
    with Image.open(tmp_path / "search.png") as img:
        assert img.format == "PNG"
    ax = drawn["axes"]
    widths = sorted(round(p.get_width(), 2) for p in ax.patches)
    expected = sorted(
        round(row[key], 2)
        for row in protocol.GATE_SEARCH
        for key in ("top1", "untrained")
        if row.get(key)
    )
    assert widths == expected
    assert len(ax.get_yticklabels()) == len(protocol.GATE_SEARCH)
    for row in protocol.GATE_SEARCH:  # every row says what changed, what it read, and a label
        assert {"change", "test", "note", "short"} <= set(row)
        assert row.get("top1") or row.get("untrained")


def test_shape_bias_counts_shape_and_texture_decisions_only():
    shape = torch.tensor([0, 1, 2, 3, 4])
    texture = torch.tensor([1, 2, 3, 4, 5])
    predicted = torch.tensor([0, 1, 3, 4, 7])  # 2 shape, 2 texture, 1 neither
    assert run.shape_bias(predicted, shape, texture) == 0.5
    assert run.shape_bias(torch.tensor([0, 1, 2, 3, 4]), shape, texture) == 1.0
    assert run.shape_bias(torch.tensor([7, 7, 7, 7, 7]), shape, texture) is None


def test_paired_interval_is_the_t_interval_of_the_differences():
    d = [1.0, 2.0, 4.0]
    lo, hi = report.paired_interval(d)
    half = 4.302652729911275 * np.std(d, ddof=1) / math.sqrt(3)  # t(0.975, 2)
    assert lo == pytest.approx(np.mean(d) - half) and hi == pytest.approx(np.mean(d) + half)
    assert report.paired_interval([3.0]) is None


def test_summary_pairs_each_variant_with_the_baseline_by_seed():
    def result(variant, seed, test):
        return {
            "variant": variant,
            "seed": seed,
            "top1": {s: test for s in protocol.EVAL_SETS},
            "shape_bias": 0.5,
        }

    runs = [
        result("moco", 0, 50.0),
        result("moco", 1, 60.0),
        result("x", 1, 65.0),
        result("x", 0, 52.0),
    ]
    table = report.summarise(runs, ["moco", "x"])
    assert table["moco"]["test"]["mean"] == 55.0 and "diff" not in table["moco"]["test"]
    cell = table["x"]["test"]
    assert cell["diff"] == pytest.approx(3.5) and cell["paired_seeds"] == [0, 1]
    assert cell["ci95"] == pytest.approx(report.paired_interval([2.0, 5.0]))
    assert table["x"]["shape_bias"]["diff"] == 0.0


def test_gate_needs_in_domain_accuracy_and_sketches_above_chance():
    sizes = {s: 400 for s in protocol.EVAL_SETS}

    def baseline(test, sketch):
        return [{"top1": {"test": test, "sketch": sketch}} for _ in range(3)]

    assert run.gate(baseline(85.0, 30.0), sizes)["passed"]
    assert not run.gate(baseline(75.0, 30.0), sizes)["passed"]  # in domain too low
    assert not run.gate(baseline(85.0, 13.0), sizes)["passed"]  # sketches at chance
    reading = run.gate(baseline(85.0, 13.0), sizes)["reading"]
    assert "85.0" in reading and "13.0" in reading


def test_a_report_stopped_by_the_gate_says_so_and_not_partial():
    sizes = {s: 400 for s in protocol.EVAL_SETS}
    runs = [
        {
            "variant": "moco",
            "seed": seed,
            "top1": {s: 85.0 if s == "test" else 13.0 for s in protocol.EVAL_SETS},
            "shape_bias": 0.3,
        }
        for seed in protocol.FULL.seeds
    ]
    base = {
        "summary": report.summarise(runs, ["moco"]),
        "machine": "test",
        "wall_s": 60.0,
        "runs": runs,
        "complete": False,
    }
    failed = report.markdown({**base, "gate": run.gate(runs, sizes)}, protocol.FULL)
    assert "Stopped at the gate: 3 of 18 runs made" in failed and "Partial" not in failed
    assert "FAILED" in failed
    passed = {"passed": True, "reading": "ok"}
    assert "Partial: 3 of 18 runs finished" in report.markdown(
        {**base, "gate": passed}, protocol.FULL
    )


def test_train_stage_refuses_an_unprepared_folder(tmp_path):
    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["--quick", "--stage", "train", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "prepare" in result.output


def test_quick_run_in_two_stages(tmp_path, ray_session):
    from click.testing import CliRunner

    quick = protocol.QUICK
    prepared = CliRunner().invoke(
        main, ["--quick", "--stage", "prepare", "--out", str(tmp_path), "--no-progress"]
    )
    assert prepared.exit_code == 0, prepared.output + repr(prepared.exception)
    assert not (tmp_path / "results.json").exists()
    # the real pipeline made the pretrain split's textures, and measured them
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] == quick.per_class["pretrain"] * len(
        shapes.CLASSES
    )
    textures = json.loads((tmp_path / "prepared.json").read_text())["textures"]
    # 4 optimisation steps: noise-like textures, measured all the same (plumbing, not quality)
    assert 0 < textures["noise_ratio"] < math.inf and textures["quality_images"] > 0
    assert textures["default_schedule"] is False

    result = CliRunner().invoke(
        main, ["--quick", "--stage", "train", "--out", str(tmp_path), "--no-progress"]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "wall time" in result.output and "gate" in result.output
    for name in ("results.md", "results.json", "results.png", "gate_search.png"):
        assert (tmp_path / name).stat().st_size > 0
    with Image.open(tmp_path / "results.png") as img:
        assert img.format == "PNG"

    report_ = json.loads((tmp_path / "results.json").read_text())
    names = [v.name for v in quick.variants]
    assert list(report_["summary"]) == names  # the baseline first, then the paper's rows
    assert {r["kind"] for r in report_["runs"]} == {
        "none",
        "texture",
        "patch",
        "texture+patch",
        protocol.UNTRAINED,
    }
    assert len(report_["runs"]) == len(names) * len(quick.seeds)
    for r in report_["runs"]:
        assert {"variant", "kind", "alpha", "seed", "top1", "shape_bias"} <= set(r)
        assert set(protocol.EVAL_SETS) <= set(r["top1"])
        assert r["shape_bias"] is None or 0 <= r["shape_bias"] <= 1
    assert set(report_["gate"]) >= {"passed", "reading"}
    for name, row in report_["summary"].items():
        assert set(row) == set(protocol.MEASURES)
        for cell in row.values():
            assert cell["std"] >= 0 and (cell["n"] == len(quick.seeds))
            assert ("diff" in cell) == (name != protocol.BASELINE)

    lines = (tmp_path / "results.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| variant"))
    assert [c.strip() for c in lines[header].strip("|").split("|")][1:] == [
        report.TITLES[m] for m in protocol.MEASURES
    ]
    rows = lines[header + 2 : header + 2 + len(names)]
    assert [r.split("|")[1].strip() for r in rows] == names
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")][1:]
        assert len(cells) == len(protocol.MEASURES)
        for cell in cells:
            mean, std = (float(x) for x in cell.split("±"))
            assert std >= 0 and (0 <= mean <= 100)

    again = CliRunner().invoke(
        main, ["--quick", "--stage", "train", "--out", str(tmp_path), "--no-progress"]
    )
    assert again.exit_code == 0 and again.output.count("kept from an earlier run") == len(
        names
    ) * len(quick.seeds)

    # another probe set: images regenerated, the textures (same pretrain images, same synthesis) kept
    shard = next((tmp_path / "shards").rglob("*.tar"))
    before = shard.stat().st_mtime_ns
    more = dataclasses.replace(quick, per_class={**quick.per_class, "train": 3})
    logged: list[str] = []
    run.prepare(tmp_path, more, log=logged.append, show_progress=False)
    assert any("kept" in line for line in logged) and shard.stat().st_mtime_ns == before
    assert len(list((tmp_path / "data" / "train").rglob("*.png"))) == 3 * len(shapes.CLASSES)
    stale = CliRunner().invoke(
        main, ["--quick", "--stage", "train", "--out", str(tmp_path), "--no-progress"]
    )
    assert (
        stale.exit_code != 0 and "prepare it again" in stale.output
    )  # quick's data is gone: refused
