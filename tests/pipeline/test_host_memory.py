import platform
import subprocess
import sys

import pytest

from nsneg.pipeline import host_memory
from nsneg.pipeline.synthesis import SynthesisConfig, TextureSynthesizer

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

#: Allocate, touch and free a 64 MiB tensor 5 times; print the page faults that took.
FAULTS = """
import resource, sys, torch
from nsneg.pipeline.host_memory import retain_freed_memory
def faults(cycles=5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(cycles):
        torch.empty(16 * 2**20).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()  # the first touch faults either way
if sys.argv[1] == "retain":
    assert retain_freed_memory()
    faults(10)  # glibc settles within a few cycles (measured: 4)
print(faults())
"""


def page_faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], check=True, capture_output=True, text=True
    )
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
@pytest.mark.slow  # a subprocess that allocates and measures page faults
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    # 5 x 64 MiB = 81,920 pages of 4 KiB: each cycle faults them in again by default
    assert page_faults("default") > 40_000
    assert page_faults("retain") < 2_000


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_a_cpu_synthesizer_retains_freed_memory():
    TextureSynthesizer(SynthesisConfig(steps=(1, 1, 1)), "cpu")
    assert host_memory._retained and host_memory.retain_freed_memory()


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(host_memory, "_retained", False)
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert host_memory.retain_freed_memory() is False
