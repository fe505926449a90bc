"""``make bench-gpu``: refuses clearly without CUDA; its table says what each figure is."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import bench_gpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_fails_clearly_without_cuda(tmp_path):
    result = CliRunner().invoke(bench_gpu.main, ["--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "no CUDA device" in result.output
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_markdown_table_lists_each_run_and_failures():
    ok = {
        "encoder": "random",
        "batch_size": 64,
        "textures_per_s": 412.34,
        "tflops": 20.0,
        "matmul_tflops": 800.0,
        "final_gram_loss": 0.01234,
        "noise_ratio_all": 0.4567,
    }
    vgg = dict(ok, encoder="vgg19", batch_size=128)
    compiled = dict(ok, compile="inductor")
    matmul = dict(ok, matmul_input_grad=True)
    failed = {"encoder": "vgg19", "batch_size": 256, "failed": 1, "log": "synthesis-vgg19-b256.log"}
    text = bench_gpu.markdown(
        "NVIDIA H100",
        [ok, compiled, matmul, vgg, failed],
        {"rc": 0, "output": "img/s 100\n", "log": "x"},
    )
    assert "# GPU benchmarks: NVIDIA H100" in text
    assert "| random | 64 | 412.3 | 20.0 | 2.5 | 0.0123 | 0.457 |" in text
    assert "| random (compiled) | 64 | 412.3 |" in text
    assert "| random (matmul input grad) | 64 | 412.3 |" in text
    assert (
        "| vgg19 | 128 | 412.3 | 20.0 | 2.5 | 0.0123 | — |" in text
    )  # no noise ratio for random VGG weights
    assert (
        "| vgg19 | 256 | failed (rc 1, see synthesis-vgg19-b256.log)" in text
        and "img/s 100" in text
    )
