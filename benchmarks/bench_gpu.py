"""``make bench-gpu``: the GPU benchmarks in one command, JSON plus a Markdown table.

What a user runs to check a new GPU box: texture synthesis for both encoders at batch
64/128/256 (VGG19 with random weights: speed and Gram loss, not texture quality; the random
encoder also reports the noise ratio; the random encoder runs twice more: with ``--compile``, the
compiled per-step loss with CUDA graphs, and with the matmul input gradient the CPU uses), a
torch.profiler table of each variant's first batch size (``profile-*.txt``), then the trainer's
train-step and loader benchmark.
Each benchmark runs in its own process, so one that fails (out of memory at batch 256, say)
is recorded as failed and the others still run.

    python benchmarks/bench_gpu.py [--out bench-gpu] [--batches 64,128,256] [--repeat 3]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click
import torch

from nsneg.datasets_manifest.format.files import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TRAIN_STEP_ARGS = [
    "--device",
    "cuda",
    "--arch",
    "resnet50",
    "--image-size",
    "224",
    "--batch-size",
    "256",
]


def _run(cmd: list[str], log: Path) -> tuple[int, str, float]:
    """Run one benchmark process; its output goes to ``log`` and the terminal. (rc, output, seconds)."""
    click.echo("$ " + " ".join(cmd), err=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    atomic_write_text(log, output)
    click.echo(proc.stdout, err=True)
    if proc.returncode:
        click.echo(
            f"FAILED ({proc.returncode}); last lines:\n" + "\n".join(output.splitlines()[-15:]),
            err=True,
        )
    return proc.returncode, output, seconds


def markdown(device: str, synthesis: list[dict], train_step: dict) -> str:
    lines = [
        f"# GPU benchmarks: {device}",
        "",
        "Texture synthesis, default schedule (`benchmarks/bench_synthesis.py`; compiled: `--compile`, "
        "the per-step loss through inductor with CUDA graphs; matmul input grad: the random encoder's "
        "pixel gradient as the CPU computes it, `--matmul-input-grad`). VGG19 has random weights: "
        "its row is speed and final Gram loss only. Matmul = a plain bf16 matmul on this card, same run.",
        "",
        "| encoder | batch | textures/s | TFLOP/s | % of bf16 matmul | final Gram loss | noise ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in synthesis:
        encoder = r["encoder"] + (
            " (compiled)"
            if r.get("compile")
            else " (matmul input grad)"
            if r.get("matmul_input_grad")
            else ""
        )
        if r.get("failed"):
            lines.append(
                f"| {encoder} | {r['batch_size']} | failed (rc {r['failed']}, see {r['log']}) | | | | |"
            )
            continue
        ratio = f"{r['noise_ratio_all']:.3f}" if r["encoder"] == "random" else "—"
        lines.append(
            f"| {encoder} | {r['batch_size']} | {r['textures_per_s']:.1f} | {r['tflops']:.1f} | "
            f"{100 * r['tflops'] / r['matmul_tflops']:.1f} | {r['final_gram_loss']:.4f} | {ratio} |"
        )
    lines += [
        "",
        f"Train step and loader (`benchmarks/bench_train_step.py {' '.join(TRAIN_STEP_ARGS)}`):",
        "",
    ]
    if train_step["rc"]:
        lines.append(f"failed (rc {train_step['rc']}), see {train_step['log']}")
    else:
        lines += ["```", train_step["output"].strip(), "```"]
    return "\n".join(lines) + "\n"


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-gpu"),
    show_default=True,
)
@click.option("--batches", default="64,128,256", show_default=True)
@click.option(
    "--repeat", type=int, default=3, show_default=True, help="timed batches per synthesis run"
)
@click.option("--skip-train-step", is_flag=True)
def main(out: Path, batches: str, repeat: int, skip_train_step: bool) -> None:
    if not torch.cuda.is_available():
        raise click.ClickException(
            "no CUDA device: `make bench-gpu` measures a GPU machine. "
            "On this machine use `make bench` (the CPU benchmarks)."
        )
    device = torch.cuda.get_device_name(0)
    out.mkdir(parents=True, exist_ok=True)
    synthesis = []
    variants = (  # (encoder, compiled, the random encoder's matmul input gradient)
        ("random", False, False),
        ("random", False, True),
        ("random", True, False),
        ("vgg19", False, False),
    )
    for encoder, compiled, matmul in variants:
        for i, batch in enumerate(int(b) for b in batches.split(",")):
            variant = "-compiled" if compiled else "-matmul-grad" if matmul else ""
            name = f"synthesis-{encoder}{variant}-b{batch}"
            cmd = [
                sys.executable,
                str(HERE / "bench_synthesis.py"),
                "--device",
                "cuda",
                "--encoder",
                encoder,
                "--batch-size",
                str(batch),
                "--repeat",
                str(repeat),
                "--reference-images",
                "0",
                "--json",
                str(out / f"{name}.json"),
            ]
            if encoder == "vgg19":
                cmd.append("--random-weights")
            if compiled:
                cmd.append("--compile")
            if encoder == "random":
                cmd.append("--matmul-input-grad" if matmul else "--library-input-grad")
            if i == 0 and not compiled:  # where the time goes, once per variant
                cmd += ["--profile", str(out / f"profile-{name}.txt")]
            rc, _, _ = _run(cmd, out / f"{name}.log")
            if rc:
                synthesis.append(
                    {
                        "encoder": encoder,
                        "compile": "inductor" if compiled else None,
                        "matmul_input_grad": matmul,
                        "batch_size": batch,
                        "failed": rc,
                        "log": f"{name}.log",
                    }
                )
            else:
                synthesis.append(json.loads((out / f"{name}.json").read_text()))
    if skip_train_step:
        train_step = {"rc": 0, "output": "(skipped)", "log": None}
    else:
        rc, output, _ = _run(
            [sys.executable, str(HERE / "bench_train_step.py"), *TRAIN_STEP_ARGS],
            out / "train-step.log",
        )
        train_step = {"rc": rc, "output": output if not rc else "", "log": "train-step.log"}
    results = {
        "device": device,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "synthesis": synthesis,
        "train_step": train_step,
    }
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", markdown(device, synthesis, train_step))
    click.echo((out / "results.md").read_text())
    failed = [r for r in synthesis if r.get("failed")] + ([train_step] if train_step["rc"] else [])
    if failed:
        raise click.ClickException(f"{len(failed)} benchmark(s) failed; see the logs in {out}/")


if __name__ == "__main__":
    main()
