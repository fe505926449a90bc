"""``bench_synthesis.py``: its figures, the input-gradient switch and the profile it writes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import bench_synthesis


@pytest.mark.parametrize("switch,expected", [("--library-input-grad", False), (None, True)])
@pytest.mark.slow  # the whole benchmark, profiled
def test_reports_figures_and_writes_a_profile(tmp_path, switch, expected):
    args = ["--device", "cpu", "--batch-size", "2", "--steps", "2,1,1", "--reference-images", "0"]
    args += ["--json", str(tmp_path / "f.json"), "--profile", str(tmp_path / "profile.txt")]
    result = CliRunner().invoke(bench_synthesis.main, args + ([switch] if switch else []))
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "f.json").read_text())
    assert figures["matmul_input_grad"] is expected  # default on a CPU: the matmul gradient
    assert figures["steps"] == [2, 1, 1] and figures["textures_per_s"] > 0
    assert 0 < figures["tflops"] < figures["matmul_tflops"]
    profile = (tmp_path / "profile.txt").read_text()
    assert "Self CPU" in profile and "aten::bmm" in profile  # the Gram products are in it
    assert ("_MatmulInputGradConv" in profile) is expected
