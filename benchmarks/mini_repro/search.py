"""``--stage search``: the protocol's views per run, chosen on the baseline alone.

Trains only the baseline (no non-semantic negatives) for each of ``Protocol.search_views``
(each budget its own run, its cosine schedule over that budget) on every seed of the protocol,
reads it and the untrained network of the same seed with the protocol's probe, and applies the
rule of ``mini_repro.sanity.drift``: the views are the smallest budget at which the paired 95 %
interval of ``baseline - untrained`` excludes zero on shape bias or cue-conflict accuracy. No
non-semantic row is trained or read. ``gate-search.json`` (and ``gate-search.png``) record
every budget's readings, the rule, and what it picks beside what the protocol uses.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from mini_repro.prepare import Log, load_prepared, machine
from mini_repro.pretrain import pretrain, probe, run_name
from mini_repro.protocol import UNTRAINED, Protocol
from mini_repro.run import run_fingerprint
from mini_repro.sanity import DRIFT_MEASURES, drift, interval_text, paired
from nsneg.datasets_manifest.format import files
from nsneg.trainer import checkpoint as checkpoints
from nsneg.trainer.eval.report import figure, save_png

RECORD = "gate-search.json"
RULE = (
    "views per run = the smallest searched budget at which the paired 95 % t-interval (over the "
    "protocol's seeds, paired by seed) of baseline - untrained network excludes zero on shape "
    "bias or on cue-conflict top-1, in either direction; if none does, the largest budget, and "
    "the full run's first sanity reading will say that the baseline does not demonstrably learn"
)


def choose(budgets: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule applied to the budgets read so far (smallest first)."""
    passing = [b["views"] for b in budgets if b["learns"]]
    if passing:
        return {"views": min(passing), "baseline_learns": True}
    largest = max((b["views"] for b in budgets), default=None)
    return {"views": largest, "baseline_learns": False}


def _one(
    run_dir: Path,
    protocol: Protocol,
    row,
    seed: int,
    shards: Path,
    images: Path,
    device: str,
    show_progress: bool,
) -> dict[str, Any]:
    """One run of the search, pre-trained and probed, kept in ``run_dir/result.json``."""
    key = run_fingerprint(protocol)
    cached = run_dir / "result.json"
    if cached.exists() and json.loads(cached.read_text()).get("fingerprint") == key:
        return json.loads(cached.read_text())
    t0 = time.time()
    ckpt = pretrain(shards, run_dir, row, seed, protocol, device, show_progress)
    backbone, _ = checkpoints.load_backbone(ckpt)
    result = {
        "variant": row.name,
        "kind": row.kind,
        "seed": seed,
        "views": 0 if row.kind == UNTRAINED else protocol.views_per_run,
        **probe(backbone, images, protocol, seed, device),
        "seconds": round(time.time() - t0, 1),
        "fingerprint": key,
    }
    files.atomic_write_json(cached, result)
    return result


def search(
    out: Path,
    protocol: Protocol,
    device: str = "cpu",
    log: Log = print,
    show_progress: bool = True,
    data: Path | None = None,
) -> dict[str, Any]:
    """Every searched budget x seed of the baseline, and the untrained network per seed; writes
    ``out/gate-search.json`` and ``gate-search.png``; returns the record."""
    from tqdm import tqdm

    if not protocol.search_views:
        raise ValueError(f"protocol {protocol.name!r} has no budgets to search (search_views)")
    out, data_dir = Path(out), Path(data or out)
    start = time.time()
    prepared = load_prepared(data_dir, protocol)
    images, shards = data_dir / "data", data_dir / "shards"
    base = protocol.row(protocol.baseline)
    untrained_row = next(v for v in protocol.variants if v.kind == UNTRAINED)
    root = out / "search" / "runs"
    total = len(protocol.seeds) * (1 + len(protocol.search_views))
    bar = tqdm(total=total, desc="search runs", unit="run", disable=not show_progress)
    untrained = []
    for seed in protocol.seeds:
        untrained.append(
            _one(
                root / run_name(untrained_row, seed),
                protocol,
                untrained_row,
                seed,
                shards,
                images,
                device,
                show_progress,
            )
        )
        bar.update()
    budgets: list[dict[str, Any]] = []
    record: dict[str, Any] = {}
    for views in sorted(protocol.search_views):
        at = protocol.with_views(views)
        runs = []
        for seed in protocol.seeds:
            name = f"{run_name(base, seed).rsplit('-seed', 1)[0]}-views{views}-seed{seed}"
            runs.append(_one(root / name, at, base, seed, shards, images, device, show_progress))
            bar.update()
        rule = drift(runs, untrained)
        budgets.append(
            {
                "views": views,
                "learns": rule["learns"],
                "measures": rule["measures"],
                "in_domain": paired(runs, untrained, "test"),
                "runs": [{k: v for k, v in r.items() if k != "fingerprint"} for r in runs],
            }
        )
        cell = rule["measures"]
        log(
            f"search: {base.name} at {views} views - untrained: "
            + ", ".join(f"{m} {interval_text(cell[m], m != 'shape_bias')}" for m in DRIFT_MEASURES)
            + f" -> learns: {rule['learns']}"
        )
        record = _record(protocol, budgets, untrained, prepared, device, start)
        files.atomic_write_json(out / RECORD, record, sort_keys=False)
    bar.close()
    plot(record, out / "gate-search.png")
    choice = record["choice"]
    log(
        f"search: the rule picks {choice['views']} views per run (baseline learns: "
        f"{choice['baseline_learns']}); protocol {protocol.name!r} uses {protocol.views_per_run}"
        + (
            ""
            if record["matches_protocol"]
            else f": set its epochs to {choice['views'] // protocol.views_per_epoch} "
            f"({protocol.views_per_epoch} views each) in mini_repro/protocol.py before the full run"
        )
        + f"; wrote {out / RECORD}"
    )
    return record


def _record(
    protocol: Protocol,
    budgets: list[dict[str, Any]],
    untrained: list[dict[str, Any]],
    prepared: dict[str, Any],
    device: str,
    start: float,
) -> dict[str, Any]:
    choice = choose(budgets)
    return {
        "what": f"The search for the views per run of protocol {protocol.name!r}: the baseline "
        f"({protocol.baseline}, no non-semantic negatives) trained for each budget on every seed, "
        "and the untrained network of each seed, read with the protocol's probe. No non-semantic "
        "row was trained or read.",
        "rule": RULE,
        "complete": len(budgets) == len(protocol.search_views),
        "protocol": protocol.name,
        "settings": {
            k: v
            for k, v in protocol.as_dict().items()
            if k not in ("variants", "curve_views", "curve_rows", "curve_seeds", "epochs")
        },
        "seeds": list(protocol.seeds),
        "searched_views": list(protocol.search_views),
        "budgets": budgets,
        "untrained": [{k: v for k, v in r.items() if k != "fingerprint"} for r in untrained],
        "choice": choice,
        "protocol_views": protocol.views_per_run,
        "matches_protocol": choice["views"] == protocol.views_per_run,
        "machine": machine(device),
        "prepare_s": prepared["prepare_s"],
        "search_s": round(time.time() - start, 1),
    }


def plot(record: dict[str, Any], path: Path) -> None:
    """One panel per rule reading: baseline - untrained (mean, 95 % interval) against views, the
    rule's pick marked -> a PNG at ``path``."""
    budgets = record["budgets"]
    fig = figure(10.0, 3.6)
    axes = fig.subplots(1, len(DRIFT_MEASURES))
    views = np.array([b["views"] for b in budgets])
    for ax, measure in zip(axes, DRIFT_MEASURES):
        for b in budgets:
            cell = b["measures"][measure]
            if cell["diff"] is None:
                continue
            colour = "tab:red" if cell["excludes_zero"] else "tab:blue"
            if cell["ci95"]:
                lo, hi = cell["ci95"]
                ax.errorbar(
                    b["views"],
                    cell["diff"],
                    yerr=[[cell["diff"] - lo], [hi - cell["diff"]]],
                    fmt="o",
                    color=colour,
                    capsize=3,
                )
            else:
                ax.plot(b["views"], cell["diff"], "o", color=colour)
        ax.axhline(0, color="black", linewidth=0.8)
        if record["choice"]["views"]:
            ax.axvline(record["choice"]["views"], color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.minorticks_off()  # only the searched budgets are labelled
        ax.set_xticks(views, [f"{v:,}" for v in views], fontsize=7)
        ax.set_xlabel("views per run")
        ax.set_title(f"{record['settings']['baseline']} - untrained: {measure}", fontsize=9)
    fig.suptitle(
        f"search ({record['protocol']}, {len(record['seeds'])} seeds): paired difference, 95 % "
        "interval (red: excludes zero); dashed: the rule's pick",
        fontsize=9,
    )
    save_png(fig, path, dpi=110)
