import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import bench_report as report


def test_the_committed_page_is_the_rendering_of_the_committed_records():
    """docs/benchmarks.md is made from docs/benchmarks/*.json: a hand edit of either alone fails."""
    assert (report.DOCS / "benchmarks.md").read_text() == report.render(report.load_records())


def test_a_recorded_run_appears_on_the_page_with_its_machine_date_and_figures(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(report, "RECORDS", tmp_path)
    figures = tmp_path / "figures.out"
    figures.write_text(json.dumps({"loader_img_s": 312.25, "variants": {"none": {"img_s": 99.5}}}))
    result = CliRunner().invoke(
        report.main,
        [
            "record", "bench_train_step", str(figures), "--machine", "8 cores of an EPYC",
            "--command", "python benchmarks/bench_train_step.py", "--date", "2026-12-01",
            "--note", "quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (path,) = tmp_path.glob("*.json")
    page = report.render(report.load_records(tmp_path))
    assert "### 2026-12-01 — 8 cores of an EPYC" in page and "* quiet" in page
    assert "| `loader_img_s` | 312.2 |" in page and "| `variants.none.img_s` | 99.5 |" in page
    assert "## Texture synthesis" in page and "No run recorded yet." in page


def test_a_new_record_never_replaces_one_already_there(tmp_path, monkeypatch):
    """Records numbered 8 and 18 with fewer files than 18: the next one is 19, all kept (a
    named record's trailing number, an image size, is no record number)."""
    monkeypatch.setattr(report, "RECORDS", tmp_path)
    kept = (
        "2026-12-04-bench_ray_scaling-8.json",
        "2026-12-05-bench_synthesis-18.json",
        "2026-11-27-bench_train_step-loader-224.json",
    )
    for name in kept:
        (tmp_path / name).write_text(name)
    figures = tmp_path / "figures.out"
    figures.write_text(json.dumps({"speedup": 11.8}))
    args = ["record", "bench_synthesis", str(figures), "--machine", "m", "--command", "c"]
    result = CliRunner().invoke(report.main, [*args, "--date", "2026-12-05 06:40 UTC"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "2026-12-05-bench_synthesis-19.json").is_file()
    assert all((tmp_path / name).read_text() == name for name in kept)


def test_a_record_without_its_machine_is_refused(tmp_path):
    Path(tmp_path / "bad.json").write_text(
        json.dumps(
            {"benchmark": "bench_pipeline", "date": "2026-12-01", "command": "x", "figures": {}}
        )
    )
    with pytest.raises(ValueError, match="no 'machine'"):
        report.load_records(tmp_path)
