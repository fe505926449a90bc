"""docs/examples/lightly_byol_nsneg.py: lightly's BYOL blocks plus nsneg's NS-negative functions
train on nsneg shards through nsneg's loader."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "lightly_byol_nsneg.py"


@pytest.mark.slow
def test_the_lightly_byol_example_trains_a_few_steps_on_nsneg_shards(shards):
    args = ["--shards", shards, "--steps", 2, "--batch-size", 4, "--image-size", 32, "--workers", 0]
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), *map(str, args)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = re.findall(
        r"step (\d)/2  byol (-?[\d.]+)  ns ([\d.]+)  ns_outrank ([\d.]+)", done.stdout
    )
    assert [int(s) for s, *_ in lines] == [1, 2]
    assert all(-1 <= float(b) <= 1 and float(n) > 0 and 0 <= float(o) <= 1 for _, b, n, o in lines)
