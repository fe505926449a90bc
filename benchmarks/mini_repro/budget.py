"""The protocol's cost, estimated without timing anything: FLOPs per view, counted by
``torch.utils.flop_counter.FlopCounterMode`` on the trainer's own model (deterministic on any
machine), scaled by wall times measured on two reference machines at a reference setting.

Model, per pre-training run: seconds = views x FLOPs per view x (reference seconds per FLOP)
x (small-view penalty) x (safety margin), plus a fixed cost per run (probes and readings) and
per protocol (world and textures). Every constant below is a measurement with its source,
or an assumption named as one.
"""

from __future__ import annotations

from typing import Any

import torch

from mini_repro.protocol import PATCH_SIZE_RANGE, UNTRAINED, Protocol, Variant
from nsneg.trainer.config import TrainConfig
from nsneg.trainer.methods import METHODS
from nsneg.trainer.negatives import patch_negatives

#: The setting the reference wall times were measured at (FULL of 2026-11-27).
REFERENCE_SETTING = {
    "arch": "resnet18",
    "image_size": 64,
    "small_images": False,
    "batch_size": 32,
    "moco_k": 64,
    "bn_splits": 2,
}
#: Measured wall times of 9,600-view runs at the reference setting, 2 cores.
REFERENCE_MACHINES = {
    "amd": {
        "what": "AMD EPYC, 2 cores: 18 rows of the reference setting (gate switched off), 72.8 min",
        "moco_run_s": 242.0,  # slowest of 234-242 s
        "nonsemantic_run_s": 300.0,  # slowest of 254-300 s
        "views": 9600,
    },
    "intel": {
        "what": "Intel, 2 cores: gate-search.json rows 5-6 at the reference setting (74 views/s)",
        "moco_run_s": 9600 / 70.0,
        "views": 9600,
    },
}
#: gate-search.json rows 6 and 13, one machine: 74 views/s at 64 px (batch 32) against 110 at
#: 32 px (ImageNet stem, batch 64). FLOPs fall ~4x from 64 to 32 px, throughput rose 1.49x:
#: small views use the cores less well. Applied as measured, to any view smaller than 64 px.
SMALL_VIEW_SPEEDUP = 110.0 / 74.0
#: Measured on the Intel machine: the probe alone 5.8-7.1 s per run at 64 px (2,400 images,
#: docs/mini-repro/previous-2026-11-27). At a smaller view its feature pass is taken as
#: SMALL_VIEW_SPEEDUP faster; assumed: readings and controls (6 views of the held-out images,
#: 3 small probes) add at most this many seconds.
PROBE_S_REFERENCE = 7.1
READINGS_S = 2.0
#: Measured on the Intel machine: prepare 167.2 s of which 96 textures 151.7 s
#: (docs/mini-repro/previous-2026-11-27); textures scale with their count.
PREPARE_S_REFERENCE = {"world_s": 167.2 - 151.7, "texture_s_per_image": 151.7 / 96}
#: The AMD machine against the Intel one, for what was not measured on it: 43 vs 70 views/s.
AMD_SLOWDOWN = 70.0 / 43.0
#: On every training second beyond the slowest measured run: batch 32 at 32 px uses the cores
#: less well than the batch 64 of SMALL_VIEW_SPEEDUP's measurement (assumption).
SAFETY_MARGIN = 1.1
BUDGET_S = 45 * 60
TARGET_S = 37 * 60


def _negatives(kind: str) -> int:
    return {"none": 0, "texture": 1, "patch": 1, "texture+patch": 2}[kind]


def flops_per_view_of(setting: dict[str, Any], kind: str, method: str = "moco") -> float:
    """FLOPs of one training step of ``method`` (forward, loss, backward) per view, its
    non-semantic negatives included, counted on the trainer's own model."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    b, size = setting["batch_size"], setting["image_size"]
    config = TrainConfig(
        negatives="",
        out="",
        method=method,
        negatives_kind=kind,
        arch=setting["arch"],
        image_size=size,
        small_images=setting["small_images"],
        batch_size=b,
        method_settings=dict(k=setting["moco_k"]) if method == "moco" else None,
        bn_splits=setting["bn_splits"],
    )
    model = METHODS[method].from_config(config, setting["bn_splits"])
    generator = torch.Generator().manual_seed(0)
    im_1, im_2 = torch.rand(b, 3, size, size), torch.rand(b, 3, size, size)
    n = _negatives(kind)
    im_ns = None
    if n:
        im_ns = torch.cat(
            [torch.rand(b, 1, 3, size, size)] * (n - 1)
            + [patch_negatives(im_1, 1, PATCH_SIZE_RANGE, generator)],
            dim=1,
        )
    with FlopCounterMode(display=False) as counter:
        loss, _ = model(im_1, im_2, im_ns, generator=generator)
        loss.backward()
    return counter.get_total_flops() / b


def moco_flops_per_view(setting: dict[str, Any], kind: str) -> float:
    return flops_per_view_of(setting, kind, "moco")


def flops_per_view(setting: dict[str, Any], variant: Variant) -> float:
    """Counted for the row's method; 0 for the untrained reference."""
    if variant.kind == UNTRAINED:
        return 0.0
    return flops_per_view_of(setting, variant.kind, variant.method)


def setting_of(protocol: Protocol) -> dict[str, Any]:
    return {
        "arch": protocol.arch,
        "image_size": protocol.image_size,
        "small_images": protocol.uses_small_images,
        "batch_size": protocol.batch_size,
        "moco_k": protocol.moco_k,
        "bn_splits": protocol.bn_splits,
    }


def estimate(protocol: Protocol) -> dict[str, Any]:
    """Seconds per run and in all, on each reference machine, for every row x seed of ``protocol``."""
    ref = moco_flops_per_view(REFERENCE_SETTING, "none")
    setting = setting_of(protocol)
    small = protocol.image_size < REFERENCE_SETTING["image_size"]
    ref_small = moco_flops_per_view(
        {**REFERENCE_SETTING, "image_size": protocol.image_size}, "none"
    )
    # per-view seconds at a small view: the reference's over the measured speed-up, in proportion
    # to FLOPs within that view size
    penalty = (ref / ref_small) / SMALL_VIEW_SPEEDUP if small else 1.0
    textures = protocol.per_class["pretrain"] + protocol.per_class.get("heldout", 0)
    eval_ref = (PROBE_S_REFERENCE / (SMALL_VIEW_SPEEDUP if small else 1.0)) * (
        sum(
            protocol.per_class[s]
            for s in ("train", "test", "sketch", "unseen_textures", "cue_conflict")
        )
        / 300
    ) + READINGS_S
    prepare_ref = PREPARE_S_REFERENCE["world_s"] + PREPARE_S_REFERENCE["texture_s_per_image"] * (
        textures * 8
    )
    machines: dict[str, Any] = {}
    rows = []
    for v in protocol.variants:
        rows.append(
            {
                "row": v.name,
                "method": v.method,
                "kind": v.kind,
                "gflops_per_view": round(flops_per_view(setting, v) / 1e9, 4),
            }
        )
    for name, m in REFERENCE_MACHINES.items():
        s_per_flop = m["moco_run_s"] / (m["views"] * ref)
        slow = AMD_SLOWDOWN if name == "amd" else 1.0
        per_row = {}
        for row in rows:
            train_s = (
                protocol.views_per_run
                * row["gflops_per_view"]
                * 1e9
                * s_per_flop
                * penalty
                * SAFETY_MARGIN
            )
            per_row[row["row"]] = round(train_s + eval_ref * slow, 1)
        runs_s = sum(per_row.values()) * len(protocol.seeds)
        machines[name] = {
            "reference": m["what"],
            "seconds_per_run": per_row,
            "prepare_s": round(prepare_ref * slow, 1),
            "total_s": round(runs_s + prepare_ref * slow, 1),
            "total_min": round((runs_s + prepare_ref * slow) / 60, 1),
        }
    check = REFERENCE_MACHINES["amd"]
    patch_ref = moco_flops_per_view(REFERENCE_SETTING, "patch")
    return {
        "protocol": protocol.name,
        "setting": setting,
        "views_per_run": protocol.views_per_run,
        "seeds": list(protocol.seeds),
        "reference_setting": REFERENCE_SETTING,
        "reference_gflops_per_view": round(ref / 1e9, 4),
        "small_view_penalty": round(penalty, 3),
        "safety_margin": SAFETY_MARGIN,
        "rows": rows,
        "machines": machines,
        "budget_s": BUDGET_S,
        "target_s": TARGET_S,
        "fits": machines["amd"]["total_s"] <= TARGET_S,
        "model_check": {
            "what": "the FLOP model's time for a patch run at the reference setting on the AMD "
            "machine, against the measured 254-300 s",
            "predicted_s": round(check["moco_run_s"] * patch_ref / ref, 1),
        },
    }


def summary_line(estimate: dict[str, Any]) -> str:
    amd, intel = estimate["machines"]["amd"], estimate["machines"]["intel"]
    return (
        f"protocol {estimate['protocol']}: {estimate['views_per_run']} views per run, "
        f"{len(estimate['seeds'])} seeds; estimated {amd['total_min']} min on the AMD reference, "
        f"{intel['total_min']} min on the Intel one (target {estimate['target_s'] / 60:.0f} min, "
        f"budget {estimate['budget_s'] / 60:.0f} min): {'fits' if estimate['fits'] else 'does not fit'}"
    )
