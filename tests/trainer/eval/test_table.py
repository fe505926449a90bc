"""nsneg-eval table: three tiny checkpoints of two configurations -> one row per configuration
(mean ± std over its seeds, recomputed here from the per-run robustness reports), the chance row
and the paper's reference rows; a rerun reuses every cached evaluation."""

import json
import statistics

import numpy as np
import pytest
import torch
from PIL import Image

from nsneg.trainer import checkpoint
from nsneg.trainer.eval import compare, configurations, robustness, stats, table
from nsneg.trainer.methods.moco import MoCo, build_backbone
from nsneg_testing import PHOTOS, encode, keep_sample, photo

CLASSES = ["n01440764", "n02102040", "n02979186"]
TINTS = [(1.0, 0.6, 0.6), (0.6, 1.0, 0.6), (0.6, 0.6, 1.0)]


def write_tree(root, per_class, offset=0, classes=CLASSES):
    for c, wnid in enumerate(classes):
        (root / wnid).mkdir(parents=True)
        for i in range(per_class):
            img = photo(PHOTOS[(c + i + offset) % len(PHOTOS)], (48, 40))
            tinted = Image.fromarray((np.asarray(img) * np.array(TINTS[c])).astype(np.uint8))
            (root / wnid / f"{wnid}_{i}.png").write_bytes(encode(tinted))
    return root


def tiny_checkpoint(path, seed, **config):
    torch.manual_seed(seed)
    model = MoCo(
        build_backbone("resnet18", small_images=True),
        build_backbone("resnet18", small_images=True),
        K=16,
    )
    full = {
        "arch": "resnet18",
        "small_images": True,
        "image_size": 32,
        "seed": seed,
        "out": str(path.parent),
        **config,
    }
    checkpoint.save(
        path,
        {
            "method": "moco",
            "model": model.state_dict(),
            "backbone": model.backbone_state_dict(),
            "config": full,
        },
    )
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("table")
    runs = [
        tiny_checkpoint(
            root / "runs" / "texture-s0" / "checkpoint.pt", 0, negatives_kind="texture", alpha=2.0
        ),
        tiny_checkpoint(
            root / "runs" / "texture-s1" / "checkpoint.pt", 1, negatives_kind="texture", alpha=2.0
        ),
        tiny_checkpoint(
            root / "runs" / "patch-s0" / "checkpoint.pt", 2, negatives_kind="patch", alpha=3.0
        ),
    ]
    return {
        "root": root,
        "runs": runs,
        "train": write_tree(root / "train", 4),
        "val": write_tree(root / "val", 3, offset=1),
        "sketch": write_tree(root / "sketch", 2, offset=2, classes=CLASSES[:2]),
    }


def run_table(invoke, world, out):
    return invoke(
        "table",
        *[arg for ckpt in world["runs"] for arg in ("--checkpoint", ckpt)],
        "--train",
        world["train"],
        "--val",
        world["val"],
        "--sketch",
        world["sketch"],
        "--corruptions",
        "gaussian_noise",
        "--severities",
        "2",
        "--epochs",
        5,
        "--workers",
        0,
        "--batch-size",
        8,
        "--out-dir",
        out,
    )


@pytest.mark.slow
def test_table_groups_seeds_and_reuses_its_cache(
    invoke, world, tmp_path, tmp_path_factory, monkeypatch
):
    out = tmp_path / "table"
    first = run_table(invoke, world, out)
    assert first.exit_code == 0, first.output
    assert "(0 of 3 evaluations reused)" in first.output
    found = json.loads((out / "table.json").read_text())
    md = (out / "table.md").read_text()
    assert (out / "table.png").stat().st_size > 10_000

    # Two configurations, seeds grouped; each cell is the mean ± sample std of the runs' top-1.
    assert [(r["label"], r["seeds"]) for r in found["rows"]] == [
        ("MoCo +Texture α=2.0", [0, 1]),
        ("MoCo +Patch α=3.0", [2]),
    ]
    assert found["rows"][0]["configuration"]["method"] == "moco"  # absent in the checkpoint: moco
    reports = {
        ckpt.parent.name: json.loads(
            next((out / "runs").glob(f"{ckpt.parent.name}-*/robustness.json")).read_text()
        )
        for ckpt in world["runs"]
    }
    texture = [reports["texture-s0"], reports["texture-s1"]]
    val = [100 * r["sets"]["val"]["top1"] for r in texture]
    cell = found["rows"][0]["cells"]["in100"]
    assert cell["mean"] == pytest.approx(statistics.fmean(val)) and cell["n"] == 2
    assert cell["std"] == pytest.approx(statistics.stdev(val), abs=1e-9)
    c = [100 * r["imagenet_c"]["mean"] for r in texture]
    assert found["rows"][0]["cells"]["imagenet_c"]["mean"] == pytest.approx(statistics.fmean(c))
    patch = found["rows"][1]["cells"]
    assert patch["sketch"] == {
        "mean": pytest.approx(100 * reports["patch-s0"]["sets"]["sketch"]["top1"]),
        "std": None,
        "n": 1,
    }
    assert patch["stylized"] == {"mean": None, "std": None, "n": 0}  # not given
    row = next(line for line in md.splitlines() if line.startswith("| MoCo +Texture"))
    assert f"| MoCo +Texture α=2.0 | 2 | {cell['mean']:.1f} ± {cell['std']:.1f} |" in row
    assert "(1 seed)" in md

    # Chance and the paper's reference rows, with their source.
    assert found["chance"]["in100"] == pytest.approx(100 / 3)
    assert "| chance (1 / classes) |  | 33.3 | 33.3 | 33.3 | 33.3 | 33.3 |" in md
    assert (
        "| MoCo v2 | 3 | 77.88 ± 0.28 | 43.08 ± 0.27 | 28.24 ± 0.58 | 16.20 ± 0.55 | 32.92 ± 0.12 |"
        in md
    )
    assert (
        "| +Patch, α = 3 | 3 | 75.58 ± 0.52 | 44.45 ± 0.15 | 34.03 ± 0.58 | 18.60 ± 0.26 | 36.89 ± 0.11 |"
        in md
    )
    assert "SongweiGe/Contrastive-Learning-with-Non-Semantic-Negatives" in found["paper"]["source"]
    assert md.index("## The paper's Table 1") > md.index("## Runs")  # a table of its own
    # The two configurations' difference per column, with its interval and test (2 seeds
    # against 1: no interval for the mean; the columns of one run each: the image counts').
    (pair,) = found["comparisons"]
    assert (pair["a"], pair["b"]) == ("MoCo +Texture α=2.0", "MoCo +Patch α=3.0")
    diff = pair["differences"]["in100"]
    assert diff["value"] == pytest.approx(cell["mean"] / 100 - patch["in100"]["mean"] / 100)
    assert "| MoCo +Texture α=2.0 − MoCo +Patch α=3.0 |" in md
    # Only what differs between the configurations, with the values used.
    assert found["differing_settings"] == ["alpha", "negatives_kind"]
    assert "* **MoCo +Texture α=2.0**: alpha=2.0, negatives_kind=texture;" in md
    # Per run: every number with its interval and n.
    val_n = reports["patch-s0"]["sets"]["val"]["images"]
    assert val_n == 9 and f"(n={val_n})" in md and "[" in md
    for name in ("table.md", "table.png"):
        keep_sample(out / name, tmp_path_factory.getbasetemp())

    # A rerun computes nothing: every evaluation comes from the cache.
    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached evaluation")

    monkeypatch.setattr(robustness, "evaluate_checkpoint", fail)
    monkeypatch.setattr(table, "probe_features", fail)
    again = run_table(invoke, world, out)
    assert again.exit_code == 0, again.output
    assert "(3 of 3 evaluations reused)" in again.output
    assert json.loads((out / "table.json").read_text())["rows"] == found["rows"]
    # Another option changes the key: that run is evaluated again (and here refused by the stub).
    with pytest.raises(AssertionError, match="recomputed"):
        invoke(
            "table",
            "--checkpoint",
            world["runs"][0],
            "--train",
            world["train"],
            "--val",
            world["val"],
            "--corruptions",
            "none",
            "--epochs",
            5,
            "--workers",
            0,
            "--out-dir",
            tmp_path / "other",
        )


def test_configurations_group_by_what_the_trainer_used():
    """Bookkeeping (seed, out) does not split a configuration; lr / optimizer left to the method
    are the values the trainer used; other methods' settings are not part of it."""
    a = configurations.configuration(
        {"arch": "resnet18", "negatives_kind": "patch", "alpha": 2, "seed": 0, "out": "runs/a"}
    )
    b = configurations.configuration(
        {"arch": "resnet18", "negatives_kind": "patch", "alpha": 2, "seed": 1, "lr": 0.8}
    )
    c = configurations.configuration(
        {"arch": "resnet18", "negatives_kind": "patch", "alpha": 2, "seed": 1, "moco": {"k": 8192}}
    )
    assert a == b  # lr None at batch 512 is MoCo's 0.4 per 256 = 0.8
    assert (a["method"], a["lr"], a["optimizer"], a["weight_decay"]) == ("moco", 0.8, "sgd", 1e-4)
    assert "seed" not in a and "out" not in a
    assert not any(k.startswith(("byol", "simclr")) for k in a)
    byol = configurations.configuration({"method": "byol", "arch": "resnet18"})
    assert (byol["optimizer"], byol["lr"]) == ("lars", 1.0) and not any(
        k.startswith("moco") for k in byol
    )
    runs = [{"configuration": x, "seed": i} for i, x in enumerate((a, b, c))]
    groups = configurations.group_runs(runs)
    assert [len(g["runs"]) for g in groups] == [2, 1]
    assert [g["label"] for g in groups] == [
        "MoCo +Patch α=2 (moco.k=16384)",
        "MoCo +Patch α=2 (moco.k=8192)",
    ]
    assert configurations.differing([a, c]) == ["moco.k"]
    assert (
        configurations.configuration_label(
            {"method": "byol", "negatives_kind": "texture", "alpha": 3}
        )
        == "byol +Texture α=3"
    )


def test_differences_between_two_configurations_of_two_seeds():
    """Paired by seed when the seeds match (the t-interval on the per-seed differences, by hand),
    Welch otherwise; a verdict line only for the column whose interval excludes zero."""

    def run(seed, in100, sketch):
        return {
            "seed": seed,
            "columns": {"in100": stats.proportion(*in100), "sketch": stats.proportion(*sketch)},
        }

    a = {"label": "A", "runs": [run(0, (80, 100), (50, 100)), run(1, (82, 100), (40, 100))]}
    b = {"label": "B", "runs": [run(0, (70, 100), (45, 100)), run(1, (71, 100), (47, 100))]}
    columns = {"in100": "IN-100", "sketch": "Sketch"}
    (pair,) = compare.pairwise([a, b], columns)
    d = np.array([0.10, 0.11])
    half = 12.7062 * d.std(ddof=1) / np.sqrt(2)  # t(0.975, 1 df)
    in100 = pair["differences"]["in100"]
    assert in100["test"] == stats.PAIRED_TEST and in100["n"] == "2 seeds"
    assert (in100["value"], in100["low"], in100["high"]) == pytest.approx(
        (d.mean(), d.mean() - half, d.mean() + half), abs=1e-4
    )
    assert not stats.excludes_zero(pair["differences"]["sketch"])
    lines = compare.verdicts([pair], columns)
    assert lines == [
        f"IN-100: A − B = {stats.difference_text(in100)} (paired t over seeds, 2 seeds): A is higher."
    ]
    text = "\n".join(compare.pairwise_markdown([pair], columns))
    assert "| A − B | +10.5 points" in text and "Sketch: A" not in text
    b["runs"][1]["seed"] = 2  # other seeds: unpaired, Welch's interval
    welch = compare.pairwise([a, b], columns)[0]["differences"]["in100"]
    assert welch["test"] == stats.WELCH_TEST and welch["low"] < in100["low"]
    one = compare.pairwise([{**a, "runs": a["runs"][:1]}, {**b, "runs": b["runs"][:1]}], columns)
    assert one[0]["differences"]["in100"]["test"] == stats.DIFFERENCE_INTERVAL_NAME


def test_table_refuses_another_set_of_checkpoints_folder(invoke, world, tmp_path):
    out = tmp_path / "t"
    out.mkdir()
    (out / "table.json").write_text(json.dumps({"evaluated": "/somewhere/else.pt"}))
    result = invoke(
        "table",
        "--checkpoint",
        world["runs"][0],
        "--train",
        world["train"],
        "--val",
        world["val"],
        "--out-dir",
        out,
    )
    assert result.exit_code == 1 and "is the report of /somewhere/else.pt" in result.output


@pytest.mark.slow
def test_texture_column_from_texture_shards(invoke, world, texture_shards, tmp_path):
    """--texture-shards adds texture-classes' held-out texture top-1, with its n, for every run."""
    shards, _ = texture_shards
    result = invoke(
        "table",
        "--checkpoint",
        world["runs"][2],
        "--train",
        world["train"],
        "--val",
        world["val"],
        "--corruptions",
        "none",
        "--texture-shards",
        shards,
        "--texture-holdout",
        0.5,
        "--epochs",
        5,
        "--workers",
        0,
        "--out-dir",
        tmp_path / "t",
    )
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "t" / "table.json").read_text())
    assert found["columns"]["texture"] == "Texture held-out"
    run = found["runs"][0]
    analysis = json.loads(
        next(
            (tmp_path / "t" / "runs").glob("patch-s0-*/texture-classes/texture-classes.json")
        ).read_text()
    )
    assert run["columns"]["texture"] == analysis["top1"]["texture_held_out_estimate"]
    assert found["rows"][0]["cells"]["texture"]["mean"] == pytest.approx(
        100 * analysis["top1"]["texture_held_out"]
    )
    assert (
        "| Model | seeds | IN-100 | IN-C | Sketch | Stylized | R | Texture held-out |"
        in result.output
    )
