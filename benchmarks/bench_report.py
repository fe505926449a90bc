"""docs/benchmarks.md, made from recorded benchmark runs, so that no figure is copied by hand.

A record (``docs/benchmarks/*.json``) is one run of one benchmark: the figures its ``--json``
option wrote, with the machine, the date, the command and notes on the conditions.

    python benchmarks/bench_synthesis.py --repeat 3 --json figures.json
    python benchmarks/bench_report.py record bench_synthesis figures.json \\
        --machine "2 CPU cores of a Xeon with AVX-512, 24 GiB" \\
        --command "python benchmarks/bench_synthesis.py --repeat 3" --note "quiet, 2 threads"
    python benchmarks/bench_report.py render          # rewrites docs/benchmarks.md
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import click

from nsneg.datasets_manifest.format.files import atomic_write_json, atomic_write_text

DOCS = Path(__file__).resolve().parents[1] / "docs"
RECORDS = DOCS / "benchmarks"

#: What each benchmark measures, in the order the page shows them.
BENCHMARKS = {
    "bench_synthesis": (
        "Texture synthesis",
        "The default engine (a batch of the embedded photos, coarse-to-fine Adam) against the "
        "reference (one image at a time, 224 px from the start, L-BFGS 300 iterations) in the "
        "same process: textures/s, quality on the same images (noise ratio: lower is better; "
        "max layout), the final Gram loss at fixed steps and the achieved TFLOP/s against a plain "
        "matmul's rate measured in the same run. `--profile FILE` adds torch.profiler's "
        "operators by self time.",
    ),
    "bench_fingerprint": (
        "Spatial fingerprint of the textures",
        "`nsneg.pipeline.fingerprint` on textures of scikit-image photographs and of the "
        "miniature world's procedural images, against random crops of the photographs: median "
        "per-texture 4-px spike, frame ratio and averaged 4-px profile share (thresholds 6, "
        "1.05, 0.5 %), with the textures' mean noise ratio.",
    ),
    "bench_pipeline": (
        "The Ray job end to end",
        "The whole job on the embedded set (2 shards of 5, Ray start-up, decoding, PNG encoding "
        "and hashing included) against the bare synthesiser in-process on the same images.",
    ),
    "bench_ray_scaling": (
        "Scaling the Ray job",
        "Textures/s of the whole job (actor start-up, decoding, PNG encoding and hashing included; "
        "one shard per image) with 1 actor of 1 CPU, 2 actors of 1 CPU and 1 actor of 2 CPUs on "
        "one node, and 2 nodes of 1 CPU (`ray.cluster_utils.Cluster`, two raylets on one "
        "machine), as ratios measured in one run.",
    ),
    "bench_patch_negatives": (
        "Patch negatives",
        "`trainer/negatives.py`'s vectorised gather against the paper's per-patch Python loop "
        "(reimplemented) and against a clone of the batch (the memory-bound limit).",
    ),
    "bench_train_step": (
        "Training step and loader",
        "On ImageNet-like data the benchmark makes itself (256 JPEGs, longest side 400–500 px, "
        "each with a 224 px PNG texture): a torchvision supervised step (the anchor), each MoCo "
        "variant's img/s and its share of the ceiling `1 / (1/fb + n/f)` (`n` key-encoder "
        "forwards), the split-BN cost, the loader's img/s and loader + steps end to end.",
    ),
    "bench_gpu": (
        "GPU",
        "`make bench-gpu` on a CUDA machine: synthesis for both encoders at batch 64/128/256 "
        "(with `--compile` and with the CPU's matmul input gradient too) and the train-step and "
        "loader benchmark, written to `bench-gpu/results.{json,md}`.",
    ),
}


def load_records(folder: Path = RECORDS) -> list[dict]:
    records = []
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("benchmark") not in BENCHMARKS:
            raise ValueError(f"{path}: unknown benchmark {record.get('benchmark')!r}")
        for field in ("machine", "date", "command", "figures"):
            if field not in record:
                raise ValueError(f"{path}: no {field!r}")
        records.append(record)
    return records


def flatten(figures: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested figures as (dotted key, value) rows, in the benchmark's own order."""
    rows = []
    for key, value in figures.items():
        if isinstance(value, dict):
            rows += flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(number(v) for v in value)
    return "—" if value is None else str(value)


def render(records: list[dict]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Made by `python benchmarks/bench_report.py render` from the records in `docs/benchmarks/`",
        "(each one run's `--json` output with its machine, date and command); do not edit by hand.",
        "A figure holds for the machine, date and conditions it is listed with.",
        "",
    ]
    for name, (title, what) in BENCHMARKS.items():
        runs = sorted(
            (r for r in records if r["benchmark"] == name), key=lambda r: r["date"], reverse=True
        )
        lines += [f"## {title}", "", f"`benchmarks/{name}.py`. {what}", ""]
        if not runs:
            lines += ["No run recorded yet.", ""]
        for run in runs:
            lines += [f"### {run['date']} — {run['machine']}", "", f"`{run['command']}`", ""]
            lines += [f"* {note}" for note in run.get("notes", [])]
            lines += [""] if run.get("notes") else []
            lines += ["| figure | value |", "| --- | ---: |"]
            lines += [f"| `{key}` | {number(value)} |" for key, value in flatten(run["figures"])]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


@click.group()
def main() -> None:
    """Benchmark records and the page made from them."""


@main.command("render")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=DOCS / "benchmarks.md"
)
def render_cmd(out: Path) -> None:
    """Rewrite docs/benchmarks.md from docs/benchmarks/*.json."""
    atomic_write_text(out, render(load_records()))
    click.echo(out)


@main.command("record")
@click.argument("benchmark", type=click.Choice(list(BENCHMARKS)))
@click.argument("figures", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--machine", required=True, help='e.g. "2 CPU cores of a Xeon with AVX-512, 24 GiB"')
@click.option("--command", "command", required=True, help="the command that wrote FIGURES")
@click.option("--date", default=None, help="[default: now, UTC]")
@click.option("--note", multiple=True, help="conditions worth knowing (repeatable)")
def record_cmd(benchmark, figures, machine, command, date, note) -> None:
    """Add one run (FIGURES: the benchmark's --json output) to docs/benchmarks/."""
    date = date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    record = dict(
        benchmark=benchmark,
        machine=machine,
        date=date,
        command=command,
        notes=list(note),
        figures=json.loads(figures.read_text()),
    )
    path = RECORDS / f"{date[:10]}-{benchmark}-{next_index(RECORDS)}.json"
    atomic_write_json(path, record)
    click.echo(path)


def next_index(records: Path) -> int:
    """One past the highest number of a numbered record (``DATE-BENCHMARK-N.json``; a named one
    such as ``...-bench_train_step-loader-224.json`` has none): a count of the records repeats a
    number once one is moved or removed, and its record would be replaced."""
    numbered = (
        re.fullmatch(r"\d{4}-\d{2}-\d{2}-bench_[a-z_]+-(\d+)", p.stem)
        for p in records.glob("*.json")
    )
    return max((int(m[1]) for m in numbered if m), default=0) + 1


if __name__ == "__main__":
    main()
