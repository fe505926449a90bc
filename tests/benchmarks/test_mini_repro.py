"""The miniature shape-vs-texture experiment: its world, statistics, search rule, learning curve,
budget, and ``--quick`` end to end (prepare, search, train).

The smoke test checks plumbing and the report's form only -- never which variant wins.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from mini_repro import budget, curve, prepare, pretrain, protocol, readings, report, sanity, search
from mini_repro import world as shapes
from mini_repro.__main__ import main, smoke
from nsneg.trainer import checkpoint as checkpoints

ONE_EACH = {split: 1 for split in shapes.SPLITS}
WORLD = protocol.FULL.world
DOCS = Path(__file__).resolve().parents[2] / "docs" / "mini-repro"


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
    search = json.loads((DOCS / "previous-2026-12-01" / "gate-search.json").read_text())
    drawn = {}

    def keep(fig, path, dpi):
        drawn["axes"] = fig.axes[0]
        fig.savefig(path, dpi=dpi)

    monkeypatch.setattr(report, "save_png", keep)
    report.plot_gate_search(search, tmp_path / "search.png")
    with Image.open(tmp_path / "search.png") as img:
        assert img.format == "PNG"
    ax = drawn["axes"]
    widths = sorted(round(p.get_width(), 2) for p in ax.patches)
    expected = sorted(
        round(row[key], 2)
        for row in search["rows"]
        for key in ("top1", "untrained")
        if row.get(key)
    )
    assert widths == expected
    assert len(ax.get_yticklabels()) == len(search["rows"])
    for row in search["rows"]:  # every row says what changed, what it read, and a label
        assert {"change", "test", "note", "short"} <= set(row)
        assert row.get("top1") or row.get("untrained")


def test_shape_bias_counts_shape_and_texture_decisions_only():
    shape = torch.tensor([0, 1, 2, 3, 4])
    texture = torch.tensor([1, 2, 3, 4, 5])
    predicted = torch.tensor([0, 1, 3, 4, 7])  # 2 shape, 2 texture, 1 neither
    assert pretrain.shape_bias(predicted, shape, texture) == 0.5
    assert pretrain.shape_bias(torch.tensor([0, 1, 2, 3, 4]), shape, texture) == 1.0
    assert pretrain.shape_bias(torch.tensor([7, 7, 7, 7, 7]), shape, texture) is None


def test_paired_interval_is_the_t_interval_of_the_differences():
    d = [1.0, 2.0, 4.0]
    lo, hi = report.paired_interval(d)
    half = 4.302652729911275 * np.std(d, ddof=1) / math.sqrt(3)  # t(0.975, 2)
    assert lo == pytest.approx(np.mean(d) - half) and hi == pytest.approx(np.mean(d) + half)
    assert report.paired_interval([3.0]) is None


def _result(variant, seed, test, shape_bias=0.5, kind="none", values=None):
    return {
        "variant": variant,
        "kind": kind,
        "seed": seed,
        "top1": {s: test for s in protocol.EVAL_SETS},
        "shape_bias": shape_bias,
        "readings": values or {m: 0.5 for m in protocol.REPRESENTATION + protocol.CONTROLS},
    }


ROWS = (
    protocol.Variant("moco", "none", 1.0, compared_to=None),
    protocol.Variant("x", "patch", 2.0),
    protocol.Variant("byol", "none", 1.0, method="byol"),
    protocol.Variant("byol+x", "patch", 2.0, method="byol", compared_to="byol"),
)


def test_summary_pairs_each_row_with_its_reference_by_seed():
    runs = [
        _result("moco", 0, 50.0),
        _result("moco", 1, 60.0),
        _result("x", 1, 65.0),
        _result("x", 0, 52.0),
        _result("byol", 0, 40.0),
        _result("byol", 1, 44.0),
        _result("byol+x", 0, 41.0, shape_bias=None),
        _result("byol+x", 1, 47.0),
    ]
    table = report.summarise(runs, ["moco", "x", "byol", "byol+x"], ROWS)
    assert table["moco"]["test"]["mean"] == 55.0 and "diff" not in table["moco"]["test"]
    cell = table["x"]["test"]
    assert cell["diff"] == pytest.approx(3.5) and cell["paired_seeds"] == [0, 1]
    assert cell["ci95"] == pytest.approx(report.paired_interval([2.0, 5.0]))
    assert cell["compared_to"] == "moco" and table["x"]["shape_bias"]["diff"] == 0.0
    byol_x = table["byol+x"]
    assert byol_x["test"]["compared_to"] == "byol" and byol_x["test"]["diff"] == pytest.approx(2.0)
    # a reading that is None on a seed leaves that seed out of the pairs and the mean
    assert byol_x["shape_bias"]["paired_seeds"] == [1] and byol_x["shape_bias"]["ci95"] is None
    assert byol_x["shape_bias"]["n"] == 1
    assert table["byol"]["test"]["diff"] == pytest.approx(-13.0)  # byol against moco


def test_findings_only_where_an_interval_excludes_zero_in_either_direction():
    runs = [_result("moco", s, 50.0) for s in range(3)]
    runs += [
        _result("x", s, 50.0 - 5.0 - s * 0.5, shape_bias=0.5 + 0.1 * (s - 1)) for s in range(3)
    ]
    runs += [_result("byol", s, 50.0 + 3.0 + s * 0.1) for s in range(3)]
    table = report.summarise(runs, ["moco", "x", "byol"], ROWS)
    found = report.findings(table)
    assert any(f.startswith("`x` lowers in domain by 5.5 points against `moco`") for f in found)
    assert any(f.startswith("`byol` raises in domain by 3.1 points") for f in found)
    assert not any("shape bias" in f for f in found)  # its interval spans zero
    same = report.summarise(
        [_result(n, s, 50.0 + s) for n in ("moco", "x") for s in range(3)], ["moco", "x"], ROWS
    )
    assert report.findings(same) == []


def _baseline_and_untrained(test, sketch, untrained_test, bias, untrained_bias, seeds=3):
    out = []
    for seed in range(seeds):
        base = _result("moco", seed, test, shape_bias=bias + 0.01 * seed)
        # cue conflict: +0, +1, +2 over seeds, an interval that holds zero
        base["top1"] = {**base["top1"], "test": test + seed, "sketch": sketch}
        base["top1"]["cue_conflict"] = 30.0 + seed
        untrained = _result(
            "no pre-training", seed, 0, shape_bias=untrained_bias, kind=protocol.UNTRAINED
        )
        untrained["top1"] = {
            **untrained["top1"],
            "test": untrained_test + seed * 0.5,
            "sketch": 12.5,
            "cue_conflict": 30.0,
        }
        out += [base, untrained]
    return out


def test_sanity_readings_are_facts_with_consequences():
    sizes = {s: 400 for s in protocol.EVAL_SETS}
    # the baseline drifts toward texture (shape bias 0.41 -> 0.2x on every seed): it learns
    good = sanity.sanity(_baseline_and_untrained(85.0, 30.0, 80.0, 0.2, 0.41), sizes, "moco")
    assert good["learns_beyond_untrained"] and good["transfers_to_outlines"]
    assert [f["answer"] for f in good["facts"]] == ["yes", "yes", "yes"]
    assert good["drift"]["measures"]["shape_bias"]["diff"] == pytest.approx(-0.20)
    bad = sanity.sanity(_baseline_and_untrained(80.0, 13.0, 81.0, 0.41, 0.41), sizes, "moco")
    # shape bias 0.41 + 0.01 x seed against 0.41: the interval [-0.015, 0.035] holds zero
    assert bad["learns_beyond_untrained"] is False and bad["transfers_to_outlines"] is False
    assert [f["answer"] for f in bad["facts"]] == ["no", "no", "no"]
    assert "barely trained network" in bad["consequences"][0]
    assert "cannot be read as shape transfer" in bad["consequences"][1]
    assert "13.0" in bad["facts"][2]["detail"]
    one = sanity.sanity(_baseline_and_untrained(85.0, 30.0, 80.0, 0.2, 0.41, 1), sizes, "moco")
    assert one["learns_beyond_untrained"] is None


def test_the_search_rule_picks_the_smallest_budget_where_the_baseline_learns():
    budgets = [
        {"views": 2560, "learns": False},
        {"views": 5120, "learns": None},
        {"views": 10240, "learns": True},
        {"views": 19200, "learns": True},
    ]
    assert search.choose(budgets) == {"views": 10240, "baseline_learns": True}
    nothing = [{"views": 2560, "learns": False}, {"views": 5120, "learns": False}]
    assert search.choose(nothing) == {"views": 5120, "baseline_learns": False}
    # the rule reads both measures, either direction
    untrained = [{"seed": s, "shape_bias": 0.4, "top1": {"cue_conflict": 30.0}} for s in range(3)]
    more_cue = [
        {"seed": s, "shape_bias": 0.4 + 0.05 * (s - 1), "top1": {"cue_conflict": 35.0 + s}}
        for s in range(3)
    ]
    rule = sanity.drift(more_cue, untrained)
    assert rule["learns"] is True and rule["measures"]["shape_bias"]["excludes_zero"] is False
    assert rule["measures"]["cue_conflict"]["diff"] == pytest.approx(6.0)


def test_learning_curve_table_pairs_each_row_with_the_baseline_at_the_same_views():
    def point(row, seed, views, bias, kind="none"):
        return {
            "variant": row,
            "kind": kind,
            "seed": seed,
            "views": views,
            "top1": {s: 50.0 + seed for s in protocol.EVAL_SETS},
            "shape_bias": bias,
        }

    points = [point("no pre-training", s, 0, 0.4, protocol.UNTRAINED) for s in (0, 1)]
    points += [point("moco", s, v, 0.4 - v / 1e5) for s in (0, 1) for v in (1280, 19200)]
    points += [
        point("patch a=2", s, v, 0.45 - v / 1e5 + 0.01 * s) for s in (0, 1) for v in (1280, 19200)
    ]
    lines = curve.table(points, ("moco", "patch a=2"), "moco")
    rows = [line for line in lines[0].splitlines() if line.startswith("| ")][1:]
    assert [r.split("|")[1].strip() for r in rows] == [
        "untrained",
        "moco",
        "moco",
        "patch a=2",
        "patch a=2",
    ]
    patch_late = rows[-1].split("|")
    assert patch_late[2].strip() == "19,200" and patch_late[3].strip() == "2"
    # shape bias: 0.258 mean; against moco +0.05 and +0.06 by seed: mean 0.055 (0.0549... in
    # floats), t(0.975, 1) = 12.71 x sd 0.00707 / sqrt 2 = 0.0635 either side
    assert patch_late[4].strip() == "0.26 (+0.05 [-0.01, 0.12])"


def test_smoke_caps_every_split_and_names_itself():
    small = smoke(protocol.FULL, 4)
    assert small.name == "full-smoke4" and max(small.per_class.values()) == 4
    assert (
        small.per_class[protocol.HELDOUT] == 4
        and small.views_per_run == protocol.FULL.views_per_run
    )


def test_report_leads_with_the_effects_and_never_stops():
    runs = [_result("moco", s, 50.0) for s in range(2)] + [
        _result("x", s, 50.0 + s) for s in range(2)
    ]
    summary = report.summarise(runs, ["moco", "x"], ROWS)
    facts = sanity.sanity(runs, {s: 400 for s in protocol.EVAL_SETS}, "moco")
    text = report.markdown(
        {
            "summary": summary,
            "sanity": facts,
            "machine": "test",
            "device": "cpu",
            "wall_s": 60.0,
            "runs": runs,
            "complete": False,
        },
        protocol.FULL,
    )
    assert text.index("## Effects") < text.index("## Sanity readings") < text.index("## Every row")
    assert "No effect detectable at this budget" in text
    assert f"Partial: 4 of {len(protocol.FULL.variants) * len(protocol.FULL.seeds)} runs" in text
    assert "stopped at" not in text.lower()


def test_effects_plot_draws_every_difference_with_its_interval(tmp_path, monkeypatch):
    runs = [_result("moco", s, 50.0) for s in range(3)] + [
        _result("x", s, 50.0 + s) for s in range(3)
    ]
    summary = report.summarise(runs, ["moco", "x"], ROWS)
    drawn = {}

    def keep(fig, path, dpi):
        drawn["axes"] = fig.axes
        fig.savefig(path, dpi=dpi)

    monkeypatch.setattr(report, "save_png", keep)
    report.plot_effects(summary, "t", tmp_path / "effects.png")
    titles = [ax.get_title() for ax in drawn["axes"] if ax.get_title()]
    assert titles == [report.TITLES[m] for m in protocol.MEASURES]
    test_panel = drawn["axes"][0]
    (line,) = [ln for ln in test_panel.get_lines() if list(ln.get_xdata()) == [1.0]]
    assert line.get_ydata()[0] == 0  # the one compared row, at its mean difference


def test_rows_name_a_method_of_the_trainer_and_a_row_to_compare_with():
    with pytest.raises(ValueError, match="method must be one of"):
        protocol.Variant("y", "none", 1.0, method="swav")
    with pytest.raises(ValueError, match="not a row"):
        dataclasses.replace(
            protocol.QUICK, variants=(protocol.Variant("y", "none", 1.0, compared_to="z"),)
        )


def test_protocols_hold_their_rows_seeds_and_curve():
    moco_rows = {(v.method, v.kind, v.alpha) for v in protocol.FULL.variants}
    assert moco_rows == {
        ("moco", "none", 1.0),
        ("moco", "texture", 2.0),
        ("moco", "patch", 2.0),
        ("moco", "patch", 3.0),
        ("moco", "texture+patch", 2.0),
        ("moco", protocol.UNTRAINED, 0.0),
    }
    assert {(v.method, v.kind) for v in protocol.BYOL.variants} == {
        ("byol", "none"),
        ("byol", "texture"),
        ("byol", "patch"),
        ("moco", protocol.UNTRAINED),
    }
    assert len(protocol.FULL.seeds) >= 5 and len(protocol.BYOL.seeds) >= 3
    for p in (protocol.GPU, protocol.QUICK):
        assert set(p.variants) == set(protocol.FULL.variants) | set(protocol.BYOL.variants[:-1])
    for p in (protocol.BYOL, protocol.LONG, protocol.GPU):  # the full protocol's world and data
        assert prepare.fingerprint(p, *prepare.DATA_FIELDS) == prepare.fingerprint(
            protocol.FULL, *prepare.DATA_FIELDS
        )
    assert protocol.LONG.views_per_run == 4 * protocol.FULL.views_per_run
    assert protocol.GPU.views_per_run > protocol.LONG.views_per_run
    full = protocol.FULL
    assert full.per_class["pretrain"] * len(shapes.CLASSES) >= 1000
    assert len(full.curve_views) >= 4 and full.curve_views[-1] == full.views_per_run
    assert full.curve_views[0] <= 1500 and len(full.curve_seeds) >= 2
    assert {"moco", "patch a=2", "texture a=2"} <= set(full.curve_rows)
    assert full.views_per_run in full.search_views
    with pytest.raises(ValueError, match="whole number of epochs"):
        dataclasses.replace(full, curve_views=(1000,))


@pytest.mark.parametrize("size", [32, 64])
def test_reference_range_makes_patch_negatives_tile_at_exactly_that_side(size):
    lo, hi = readings._scaled_range(protocol.PATCH_SIZE_RANGE, size, size)
    # the view: each pixel's own index, so a copied tile is read back from its values
    view = (
        torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size).expand(1, 3, -1, -1)
    )
    for side in range(lo, hi + 1):
        out = readings.patch_negatives(
            view, 1, readings.reference_range(side, size), torch.Generator().manual_seed(side)
        )[0, 0, 0]
        # within a tile, neighbours along a row differ by 1 (one column further in the source)
        for x in range(side - 1):
            assert (out[:, x + 1] - out[:, x] == 1).all()


def test_seam_blending_changes_the_tile_boundaries_only():
    side, size = 4, 16
    band = readings.seam_band(side, size)
    assert band[:, 3].all() and band[:, 4].all() and not band[1:3, 1:3].any()
    assert not band[0, 0] and band.sum() < size * size
    x = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    blended = readings.blend_seams(x, side)
    assert torch.equal(blended[:, ~band], x[:, ~band])
    smooth = torch.nn.functional.avg_pool2d(x[None], 3, 1, 1, count_include_pad=False)[0]
    assert torch.allclose(blended[:, band], smooth[:, band])


def test_margins_are_similarities_above_another_image(tmp_path):
    class Identity(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 4, 4, generator=g)
    views = {v: torch.randn(8, 3, 4, 4, generator=g) for v in readings.VIEWS}
    views["intact"], views["positive"], views["texture"] = x, x.clone(), -x
    held = readings.HeldoutViews(views, list(shapes.CLASSES), torch.full((8,), 2))
    out = readings.read(Identity(), held, "cpu", probe_epochs=5, seed=0)
    f = torch.nn.functional.normalize(x.flatten(1), dim=1)
    other = float(((f @ f.T).sum() - 8) / 56)
    assert out["similarity"]["other"] == pytest.approx(other, abs=1e-6)
    assert out["positive_margin"] == pytest.approx(1.0 - other, abs=1e-6)
    assert out["texture_margin"] == pytest.approx(-1.0 - other, abs=1e-6)
    for m in protocol.CONTROLS:
        assert 0 <= out[m] <= 100


def test_control_probe_reads_unseen_classes_only():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g) + 4.0
    fit = torch.arange(40) < 20
    assert readings.control_probe(a, b, fit, epochs=30, seed=0) == 100.0
    # the same distribution on both sides: the held-out half is near chance, not memorised
    same = readings.control_probe(a, torch.randn(40, 8, generator=g), fit, epochs=30, seed=0)
    assert same < 80.0


@pytest.mark.slow
def test_flop_count_orders_the_rows_by_their_work():
    setting = {**budget.setting_of(protocol.FULL), "batch_size": 4, "moco_k": 8}
    none = budget.moco_flops_per_view(setting, "none")
    assert none == budget.moco_flops_per_view(setting, "none")  # deterministic
    patch = budget.moco_flops_per_view(setting, "patch")
    both = budget.moco_flops_per_view(setting, "texture+patch")
    assert none < patch < both
    # each negative is one more key-encoder forward: the same increment per negative
    assert both - patch == pytest.approx(patch - none, rel=1e-3)
    byol = protocol.Variant("b", "none", 1.0, method="byol")
    byol_patch = protocol.Variant("bp", "patch", 2.0, method="byol")
    # BYOL: both views through the online network (with its predictor) and the target network,
    # where MoCo sends one view through each: about twice MoCo's step
    assert 1.8 * none < budget.flops_per_view(setting, byol) < 2.6 * none
    assert budget.flops_per_view(setting, byol) < budget.flops_per_view(setting, byol_patch)
    untrained = protocol.Variant("u", protocol.UNTRAINED, 0.0)
    assert budget.flops_per_view(setting, untrained) == 0.0


@pytest.mark.parametrize("name,record", [("full", "budget.json"), ("byol", "budget-byol.json")])
def test_the_recorded_budget_is_the_protocol_s_and_fits_90_minutes(name, record):
    p = protocol.PROTOCOLS[name]
    recorded = json.loads((DOCS / record).read_text())["estimate"]
    assert recorded["setting"] == budget.setting_of(p)
    assert recorded["views_per_run"] == p.views_per_run and recorded["seeds"] == list(p.seeds)
    assert [r["row"] for r in recorded["rows"]] == [v.name for v in p.variants]
    fresh = budget.estimate(p, rows_flops=False)
    assert recorded["total_s"] == fresh["total_s"]  # the record is today's model's
    assert fresh["total_s"] <= 90 * 60 and fresh["fits"]


def test_budget_counts_each_row_by_its_measured_step_cost():
    rows = {v.name: v for v in protocol.FULL.variants + protocol.BYOL.variants}
    costs = {n: budget.step_cost(v) for n, v in rows.items()}
    assert costs["moco"] == 1.0 and costs["no pre-training"] == 0.0
    assert costs["moco"] < costs["patch a=2"] == costs["texture a=2"] < costs["texture+patch a=2"]
    assert costs["byol"] < costs["byol+patch a=2"]
    base = budget.estimate(protocol.FULL, rows_flops=False)
    more = budget.estimate(protocol.FULL.with_views(2 * protocol.FULL.views_per_run), False)
    moco = next(r for r in base["rows"] if r["row"] == "moco")
    assert moco["seconds_per_run"] == pytest.approx(
        protocol.FULL.views_per_run / budget.MOCO_VIEWS_PER_S * budget.SAFETY_MARGIN
        + base["probe_s"]
        + budget.READINGS_S,
        abs=0.1,
    )
    assert more["runs_s"] > base["runs_s"] and more["prepare"] == base["prepare"]
    with pytest.raises(ValueError, match="measure it first"):
        budget.estimate(dataclasses.replace(protocol.FULL, image_size=64), rows_flops=False)


def test_data_and_runs_of_another_texture_generator_are_not_reused(monkeypatch):
    """Textures of another engine version are other data: the prepared folder's key (and so
    every kept run's) changes with it, as the texture sets' own keys do."""
    from mini_repro import run
    from nsneg.pipeline import synthesis

    before = (
        prepare.fingerprint(protocol.FULL, *prepare.DATA_FIELDS),
        run.run_fingerprint(protocol.FULL),
    )
    monkeypatch.setattr(synthesis, "GENERATOR_VERSION", "another-generator")
    after = (
        prepare.fingerprint(protocol.FULL, *prepare.DATA_FIELDS),
        run.run_fingerprint(protocol.FULL),
    )
    assert before[0] != after[0] and before[1] != after[1]


def test_train_stage_refuses_an_unprepared_folder(tmp_path):
    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["--quick", "--stage", "train", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "prepare" in result.output


@pytest.mark.slow
def test_quick_run_in_stages_prepare_search_train(tmp_path, ray_session, monkeypatch):
    from click.testing import CliRunner

    quick = protocol.QUICK
    prepared = CliRunner().invoke(
        main, ["--quick", "--stage", "prepare", "--out", str(tmp_path), "--no-progress"]
    )
    assert prepared.exit_code == 0, prepared.output + repr(prepared.exception)
    assert not (tmp_path / "results.json").exists()
    # the real pipeline made the textures of the pretrain and held-out splits, and measured them
    for folder, (split, shard_split) in prepare.TEXTURE_SETS.items():
        manifest = json.loads((tmp_path / folder / "manifest.json").read_text())
        assert manifest["splits"][shard_split]["samples"] == quick.per_class[split] * len(
            shapes.CLASSES
        )
    sets = json.loads((tmp_path / "prepared.json").read_text())["texture_sets"]
    for textures in sets.values():
        # 4 optimisation steps: noise-like textures, measured all the same (plumbing, not quality)
        assert 0 < textures["noise_ratio"] < math.inf and textures["quality_images"] > 0
        assert textures["default_schedule"] is False
    # beside the default schedule's noise ratio on the same images
    pretrain_set = sets["shards"]
    assert pretrain_set["default_schedule_images"] == quick.default_schedule_images
    assert 0 < pretrain_set["default_schedule_noise_ratio"] < math.inf
    assert 0 < pretrain_set["this_schedule_noise_ratio_same_images"] < math.inf
    assert tuple(pretrain_set["synthesis"]["sizes"]) == quick.synthesis_sizes
    with Image.open(next((tmp_path / "data" / "pretrain").rglob("*.png"))) as img:
        assert img.size == (quick.pretrain_side, quick.pretrain_side)  # pre-resized
    with Image.open(next((tmp_path / "data" / "train").rglob("*.png"))) as img:
        assert img.size == (quick.world.image_size, quick.world.image_size)

    # the search: the baseline alone at each searched budget, and the untrained network
    searched = CliRunner().invoke(
        main, ["--quick", "--stage", "search", "--out", str(tmp_path), "--no-progress"]
    )
    assert searched.exit_code == 0, searched.output + repr(searched.exception)
    assert "the rule picks" in searched.output
    record = json.loads((tmp_path / "gate-search.json").read_text())
    assert record["complete"] and [b["views"] for b in record["budgets"]] == list(
        quick.search_views
    )
    for b in record["budgets"]:
        assert {r["variant"] for r in b["runs"]} == {quick.baseline}  # no NS row
        assert [r["seed"] for r in b["runs"]] == list(quick.seeds)
        assert {r["views"] for r in b["runs"]} == {b["views"]}
        assert set(b["measures"]) == set(sanity.DRIFT_MEASURES)
    assert [r["seed"] for r in record["untrained"]] == list(quick.seeds)
    assert record["choice"] == search.choose(record["budgets"])
    assert record["matches_protocol"] == (record["choice"]["views"] == quick.views_per_run)
    assert {d.name for d in (tmp_path / "search" / "runs").iterdir()} == {
        f"no_pre-training-seed{s}" for s in quick.seeds
    } | {f"moco-views{v}-seed{s}" for v in quick.search_views for s in quick.seeds}
    with Image.open(tmp_path / "gate-search.png") as img:
        assert img.format == "PNG"

    result = CliRunner().invoke(
        main, ["--quick", "--stage", "train", "--out", str(tmp_path), "--no-progress"]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "wall time" in result.output
    for name in ("results.md", "results.json", "results.png"):
        assert (tmp_path / name).stat().st_size > 0
    with Image.open(tmp_path / "results.png") as img:
        assert img.format == "PNG"

    report_ = json.loads((tmp_path / "results.json").read_text())
    names = [v.name for v in quick.variants]
    assert list(report_["summary"]) == names  # in the protocol's order
    kinds = {(r["method"], r["kind"]) for r in report_["runs"]}
    assert kinds == {(v.method, v.kind) for v in quick.variants}
    assert {"none", "texture", "patch", "texture+patch", protocol.UNTRAINED} <= {
        k for _, k in kinds
    }
    assert len(report_["runs"]) == len(names) * len(quick.seeds)
    for r in report_["runs"]:
        assert {"variant", "kind", "alpha", "method", "seed", "top1", "shape_bias"} <= set(r)
        assert set(protocol.EVAL_SETS) <= set(r["top1"])
        assert r["shape_bias"] is None or 0 <= r["shape_bias"] <= 1
        reading = r["readings"]
        assert set(protocol.REPRESENTATION + protocol.CONTROLS) <= set(reading)
        assert set(reading["similarity"]) == {
            "positive",
            "texture",
            "shuffled",
            "blended",
            "blended_intact",
            "other",
        }
        assert all(-1.0 <= v <= 1.0 for v in reading["similarity"].values())
        for m in protocol.CONTROLS:
            assert 0 <= reading[m] <= 100
    assert [f["answer"] for f in report_["sanity"]["facts"]] and report_["sanity"]["consequences"]
    for name, row in report_["summary"].items():
        assert set(row) == set(protocol.MEASURES)
        compared = next(v.compared_to for v in quick.variants if v.name == name)
        for cell in row.values():
            assert cell["std"] >= 0 and cell["n"] <= len(quick.seeds)
            assert cell.get("compared_to") == compared
            if compared and cell["diff"] is not None and len(cell["paired_seeds"]) > 1:
                lo, hi = cell["ci95"]
                assert lo <= cell["diff"] <= hi

    text = (tmp_path / "results.md").read_text()
    assert text.index("## Effects") < text.index("## Sanity readings") < text.index("## Every row")
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| difference"))
    assert [c.strip() for c in lines[header].strip("|").split("|")][1:] == [
        report.TITLES[m] for m in protocol.TRANSFER
    ]
    compared_rows = [v for v in quick.variants if v.compared_to]
    rows = lines[header + 2 : header + 2 + len(compared_rows)]
    assert [r.split("|")[1].strip() for r in rows] == [
        f"{v.name} − {v.compared_to}" for v in compared_rows
    ]
    header = next(i for i, line in enumerate(lines) if line.startswith("| row"))
    rows = lines[header + 2 : header + 2 + len(names)]
    assert [r.split("|")[1].strip() for r in rows] == names
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")][1:]
        assert len(cells) == len(protocol.TRANSFER)
        for cell in cells:
            if cell != "n/a":
                mean, std = (float(x) for x in cell.split("±"))
                assert std >= 0 and (0 <= mean <= 100)

    # the learning curve: each curve run's kept backbones, probed; the untrained seed at 0 views
    points = report_["curve"]
    for row in quick.curve_rows:
        for seed in quick.curve_seeds:
            mine = sorted(p["views"] for p in points if p["variant"] == row and p["seed"] == seed)
            assert mine == list(quick.curve_views)
            run_dir = tmp_path / "runs" / pretrain.run_name(quick.row(row), seed)
            for views in quick.curve_views:
                backbone, _ = checkpoints.load_backbone(pretrain.curve_checkpoint(run_dir, views))
                assert sum(p.numel() for p in backbone.parameters()) > 0
    assert sorted(p["seed"] for p in points if p["views"] == 0) == list(quick.curve_seeds)
    for p in points:
        assert p["shape_bias"] is None or 0 <= p["shape_bias"] <= 1
    assert "## Learning curve" in text
    with Image.open(tmp_path / "learning-curve.png") as img:
        assert img.format == "PNG"

    again = CliRunner().invoke(
        main, ["--quick", "--stage", "train", "--out", str(tmp_path), "--no-progress"]
    )
    assert again.exit_code == 0 and again.output.count("kept from an earlier run") == len(
        names
    ) * len(quick.seeds)

    # another probe set: images regenerated, the textures (same images, same synthesis) kept
    shard = next((tmp_path / "shards").rglob("*.tar"))
    before = shard.stat().st_mtime_ns
    more = dataclasses.replace(quick, per_class={**quick.per_class, "train": 3})
    logged: list[str] = []
    prepare.prepare(tmp_path, more, log=logged.append, show_progress=False)
    assert sum("kept" in line for line in logged) == 2 and shard.stat().st_mtime_ns == before
    assert len(list((tmp_path / "data" / "train").rglob("*.png"))) == 3 * len(shapes.CLASSES)
    stale = CliRunner().invoke(
        main, ["--quick", "--stage", "train", "--out", str(tmp_path), "--no-progress"]
    )
    assert (
        stale.exit_code != 0 and "prepare it again" in stale.output
    )  # quick's data is gone: refused
