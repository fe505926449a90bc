"""Every benchmark script imports and answers ``--help``: a module the project moved or renamed
breaks the benchmark here, not on the user's machine before a long run."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from click.testing import CliRunner

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("bench_*.py")) + ["mini_repro.__main__"]


def test_every_script_is_listed():
    assert "bench_ray_scaling" in SCRIPTS and len(SCRIPTS) >= 8


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_answers_help(name):
    module = importlib.import_module(name)
    result = CliRunner().invoke(module.main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
