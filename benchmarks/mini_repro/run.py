"""The ``train`` stage of the mini reproduction (CPU or CUDA, no Ray), on a prepared folder.

For every seed and row: pre-training with the real trainer (``mini_repro.pretrain``), a linear
probe on frozen features of ``train`` read on test and the three out-of-domain sets, and the
representation reading and shortcut controls on the held-out images (``mini_repro.readings``);
for the learning curve's runs, the probes of their kept backbones (``mini_repro.curve``).
Every row always runs; the sanity readings (``mini_repro.sanity``) are facts in the report,
never a stop.

A run that is stopped resumes: finished runs are kept (``runs/*/result.json``), an unfinished
pre-training continues from its last checkpoint, and a report is written after every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from mini_repro import curve, readings, report, world
from mini_repro.prepare import DATA_FIELDS, Log, fingerprint, load_prepared, machine, prepare
from mini_repro.pretrain import pretrain, probe, run_name
from mini_repro.protocol import EVAL_SETS, HELDOUT, MEASURES, UNTRAINED, Protocol
from mini_repro.sanity import sanity
from nsneg.datasets_manifest.format import files
from nsneg.trainer import checkpoint as checkpoints

RUN_FIELDS = DATA_FIELDS + (
    "arch",
    "image_size",
    "batch_size",
    "moco_k",
    "epochs",
    "steps_per_epoch",
    "bn_splits",
    "lr",
    "small_images",
    "shuffle_buffer",
    "probe_epochs",
)


def run_fingerprint(protocol: Protocol) -> str:
    """What a kept run's result depends on: the run settings and the readings it holds (a result
    written with other readings is made again, not read with missing ones)."""
    return hashlib.sha256(
        (fingerprint(protocol, *RUN_FIELDS) + json.dumps(MEASURES)).encode()
    ).hexdigest()[:16]


def train(
    out: Path,
    protocol: Protocol,
    device: str = "cpu",
    log: Log = print,
    show_progress: bool = True,
    data: Path | None = None,
) -> dict[str, Any]:
    """Every seed x row on a prepared folder (``data``, default ``out``); writes results.json,
    results.md, results.png and (with a curve) learning-curve.png into ``out``; returns the report."""
    from tqdm import tqdm

    out, data_dir = Path(out), Path(data or out)
    start = time.time()
    load_before = os.getloadavg()
    prepared = load_prepared(data_dir, protocol)
    images, shards = data_dir / "data", data_dir / "shards"
    held = readings.heldout_views(
        data_dir / "heldout-shards", HELDOUT, protocol.image_size, seed=protocol.data_seed
    )
    key = run_fingerprint(protocol)
    curve_key = hashlib.sha256((key + json.dumps(protocol.curve_views)).encode()).hexdigest()[:16]
    eval_sizes = {s: protocol.per_class[s] * len(world.CLASSES) for s in EVAL_SETS}
    # Seed by seed, the untrained reference first: a stopped job leaves paired rows behind.
    order = [v for v in protocol.variants if v.kind == UNTRAINED] + [
        v for v in protocol.variants if v.kind != UNTRAINED
    ]
    jobs = [(v, s) for s in protocol.seeds for v in order]
    runs: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []

    def write_report(complete: bool, plot: bool) -> dict[str, Any]:
        """results.json/.md of the runs so far (after every run: a stopped job leaves a valid
        report), and the plots when ``plot``."""
        names = [v.name for v in protocol.variants if any(r["variant"] == v.name for r in runs)]
        points = curve.points_of(curves, runs)
        full_report = {
            "protocol": protocol.as_dict(),
            "complete": complete,
            "machine": machine(device),
            "device": device,
            "budget": protocol.budget,
            "torch_threads": torch.get_num_threads(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_now": [round(x, 2) for x in os.getloadavg()],
            "wall_s": round(time.time() - start + prepared["prepare_s"], 1),
            "prepare_s": prepared["prepare_s"],
            "train_s": round(time.time() - start, 1),
            "textures": prepared["textures"],
            "texture_sets": prepared.get("texture_sets", {}),
            "sanity": sanity(runs, eval_sizes, protocol.baseline),
            "runs": [{k: v for k, v in r.items() if k != "fingerprint"} for r in runs],
            "summary": report.summarise(runs, names, protocol.variants),
            "curve": points,
        }
        text = report.markdown(full_report, protocol)
        if curves:
            text += "\n".join(
                [
                    "",
                    "## Learning curve (checkpoints along one run, each probed)",
                    "",
                    *curve.table(points, protocol.curve_rows, protocol.baseline),
                    "",
                    "Plot: `learning-curve.png`.",
                    "",
                ]
            )
        files.atomic_write_json(out / "results.json", full_report, sort_keys=False)
        files.atomic_write_text(out / "results.md", text)
        if plot:
            report.plot_effects(
                full_report["summary"],
                f"mini reproduction ({protocol.name}, {machine(device)}): paired difference to "
                f"the row each is compared with, mean and 95 % t-interval over "
                f"{len(protocol.seeds)} seeds",
                out / "results.png",
            )
            if curves:
                curve.plot(
                    points,
                    protocol.curve_rows,
                    f"mini reproduction ({protocol.name}): readings against views, checkpoints "
                    f"along one run (seeds {protocol.curve_seeds}; thin lines: each seed)",
                    out / "learning-curve.png",
                )
        return full_report

    bar = tqdm(total=len(jobs), desc="mini-repro runs", unit="run", disable=not show_progress)
    for variant, seed in jobs:
        run_dir = out / "runs" / run_name(variant, seed)
        cached = run_dir / "result.json"
        on_curve = variant.name in protocol.curve_rows and seed in protocol.curve_seeds
        curve_views = protocol.curve_views if on_curve else ()
        curve_kept = not on_curve or (
            (run_dir / curve.CURVE_JSON).exists()
            and json.loads((run_dir / curve.CURVE_JSON).read_text()).get("fingerprint") == curve_key
        )
        if (
            cached.exists()
            and json.loads(cached.read_text()).get("fingerprint") == key
            and curve_kept
        ):
            result = json.loads(cached.read_text())
            log(f"{variant.name:18s} seed {seed}: kept from an earlier run")
        else:
            t0 = time.time()
            ckpt = pretrain(
                shards, run_dir, variant, seed, protocol, device, show_progress, curve_views
            )
            t1 = time.time()
            backbone, _ = checkpoints.load_backbone(ckpt)
            result = {
                "variant": variant.name,
                "kind": variant.kind,
                "alpha": variant.alpha,
                "method": variant.method,
                "seed": seed,
                **probe(backbone, images, protocol, seed, device),
                "readings": readings.read(backbone, held, device, protocol.probe_epochs, seed),
                "train_s": round(t1 - t0, 1),
                "probe_s": round(time.time() - t1, 1),
                "fingerprint": key,
            }
            if on_curve:
                t2 = time.time()
                curve.probe_run(run_dir, images, protocol, seed, device, curve_key)
                result["curve_probe_s"] = round(time.time() - t2, 1)
            files.atomic_write_json(cached, result)
            bias = "n/a" if result["shape_bias"] is None else f"{result['shape_bias']:.2f}"
            log(
                f"{variant.name:18s} seed {seed}: "
                + " ".join(f"{k} {v:.1f}" for k, v in result["top1"].items())
                + f" shape_bias {bias} ({result['train_s']:.0f} s train, "
                f"{result['probe_s']:.0f} s probes and readings)"
            )
        if on_curve:
            points = curve.probe_run(run_dir, images, protocol, seed, device, curve_key)
            curves.append(
                {"variant": variant.name, "kind": variant.kind, "seed": seed, "points": points}
            )
        runs.append(result)
        bar.update()
        write_report(complete=False, plot=False)  # the plots (a dozen panels) once, at the end
    bar.close()
    full_report = write_report(complete=len(runs) == len(jobs), plot=True)
    log((out / "results.md").read_text())
    log(
        f"wall time: {full_report['wall_s']:.0f} s ({full_report['wall_s'] / 60:.1f} min); "
        f"wrote {out}/results.md, results.json, results.png"
        + (", learning-curve.png" if curves else "")
    )
    return full_report


def run(
    out: Path, protocol: Protocol, device: str = "cpu", log: Log = print, show_progress: bool = True
):
    """Both stages."""
    prepare(out, protocol, log, show_progress)
    return train(out, protocol, device, log, show_progress)
