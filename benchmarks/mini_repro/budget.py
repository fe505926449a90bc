"""The protocols' cost on the AMD EPYC reference (2 cores), estimated from per-view costs.

Model, per pre-training run: seconds = views / (MoCo's measured views/s at the protocol's
setting) x (the row's step cost against MoCo's, measured) x (safety margin), plus the probes
(and, for the runs of the learning curve, one probe per kept backbone); per protocol the world
and the textures (measured per image). Every constant below is a measurement with its source,
or an assumption named as one. FLOPs per view, counted by ``torch.utils.flop_counter`` on the
trainer's own model, are listed beside each row (deterministic on any machine) as a check on
the measured ratios.
"""

from __future__ import annotations

from typing import Any

import torch

from mini_repro.protocol import (
    EVAL_SETS,
    HELDOUT,
    PATCH_SIZE_RANGE,
    UNTRAINED,
    Protocol,
    Variant,
)
from mini_repro.world import CLASSES
from nsneg.trainer.config import TrainConfig
from nsneg.trainer.methods import METHODS
from nsneg.trainer.negatives import patch_negatives

REFERENCE = "AMD EPYC, 2 cores, 24 GiB, no GPU"
#: MoCo without negatives through the project's Trainer at the full protocol's setting
#: (resnet18, ImageNet stem, 32 px, batch 64, K 1,024; 2,000 pre-training images), AMD EPYC
#: reference: 19,200 views in 76 s and 64,000 in 253 s (docs/mini-repro.md, "How the protocol
#: was found").
MOCO_VIEWS_PER_S = 250.0
MOCO_SETTING = {"arch": "resnet18", "image_size": 32, "small_images": False, "batch_size": 64}
#: A step's cost against plain MoCo's, measured through the trainer (docs/benchmarks/
#: 2026-12-01-bench_train_step-methods.json, 2 Intel Xeon cores, 64 px, batch 32): MoCo 71.9
#: views/s, MoCo + texture + patch 52.5, BYOL 46.1, BYOL + texture + patch 35.4. Assumed: the
#: same ratios at 32 px, and one negative costs half of two (each negative is one more forward
#: of the key or target network: the FLOP count adds the same per negative).
STEP_COST = {
    "moco": (1.0, 71.9 / 52.5),  # (no negatives, two negatives)
    "byol": (71.9 / 46.1, 71.9 / 35.4),
    "simclr": (71.9 / 52.0, 71.9 / 45.7),
}
#: On every training second: the ratios were measured at another view size and machine.
SAFETY_MARGIN = 1.1
#: The probe of one backbone (features of 2,400 images at 64 px and a 100-epoch linear probe):
#: 7.1 s at most on the Intel machine (docs/mini-repro/previous-2026-11-27), taken as 1.49x
#: faster at 32 px (previous-2026-12-01/gate-search.json rows 6 and 13) and 1.63x slower on the
#: AMD reference (43 against 70 views/s at the same setting), in proportion to its images.
PROBE_S_PER_IMAGE = 7.1 / 1.49 * (70.0 / 43.0) / 2400
#: The representation reading and the controls of one backbone (assumption: at most this).
READINGS_S = 3.0
#: The world: 15.5 s for 2,544 images on the Intel machine (2026-11-27), 1.63x on the AMD one.
WORLD_S_PER_IMAGE = 15.5 / 2544 * (70.0 / 43.0)
#: The texture job with the CPU protocols' schedule (56 -> 224 px, 80 + 2 steps), per texture,
#: on the AMD reference, the whole job (decoding, crops, synthesis, PNG encoding, shard writing):
#: 2,000 pre-training textures in 574 s, alone on the machine (the full protocol's prepare,
#: 2026-12-05; an earlier 0.85 s for the synthesis alone was measured on a shared machine).
TEXTURE_S = 574 / 2000
#: The default schedule made for the noise-ratio comparison: 8 textures x 4.3 s (AMD, shared).
DEFAULT_SCHEDULE_S = 8 * 4.3


def _negatives(kind: str) -> int:
    return {"none": 0, "texture": 1, "patch": 1, "texture+patch": 2}[kind]


def step_cost(variant: Variant) -> float:
    """The row's seconds per view against plain MoCo's (0 for the untrained reference)."""
    if variant.kind == UNTRAINED:
        return 0.0
    plain, two = STEP_COST[variant.method]
    return plain + _negatives(variant.kind) * (two - plain) / 2


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


def probe_s(protocol: Protocol) -> float:
    """One probe of one backbone on the AMD reference."""
    images = sum(protocol.per_class[s] for s in ("train",) + EVAL_SETS) * len(CLASSES)
    return PROBE_S_PER_IMAGE * images


def train_s(protocol: Protocol, variant: Variant, views: int | None = None) -> float:
    views = protocol.views_per_run if views is None else views
    return views / MOCO_VIEWS_PER_S * step_cost(variant) * SAFETY_MARGIN


def prepare_s(protocol: Protocol) -> dict[str, float]:
    images = sum(protocol.per_class.values()) * len(CLASSES)
    textures = (protocol.per_class["pretrain"] + protocol.per_class[HELDOUT]) * len(CLASSES)
    return {
        "world_s": round(WORLD_S_PER_IMAGE * images, 1),
        "textures_s": round(TEXTURE_S * textures + DEFAULT_SCHEDULE_S, 1),
    }


def _check_setting(protocol: Protocol) -> None:
    setting = setting_of(protocol)
    if any(setting[k] != v for k, v in MOCO_SETTING.items()):
        raise ValueError(
            f"the measured views/s are of {MOCO_SETTING}; protocol {protocol.name!r} trains at "
            f"{setting}: measure it first"
        )


def estimate(protocol: Protocol, rows_flops: bool = True) -> dict[str, Any]:
    """Seconds per run and in all on the AMD reference for every row x seed of ``protocol``
    (with the learning curve's probes), its prepare, and its search if it has one."""
    _check_setting(protocol)
    setting = setting_of(protocol)
    probe, prepare = probe_s(protocol), prepare_s(protocol)
    rows, runs_s = [], 0.0
    for v in protocol.variants:
        per_run = train_s(protocol, v) + probe + READINGS_S
        curve = len(protocol.curve_views) * probe if v.name in protocol.curve_rows else 0.0
        runs_s += per_run * len(protocol.seeds) + curve * len(protocol.curve_seeds)
        row = {
            "row": v.name,
            "method": v.method,
            "kind": v.kind,
            "step_cost_vs_moco": round(step_cost(v), 3),
            "seconds_per_run": round(per_run, 1),
            "curve_probes_s_per_run": round(curve, 1),
        }
        if rows_flops:
            row["gflops_per_view"] = round(flops_per_view(setting, v) / 1e9, 4)
        rows.append(row)
    total = runs_s + sum(prepare.values())
    out: dict[str, Any] = {
        "protocol": protocol.name,
        "reference": REFERENCE,
        "setting": setting,
        "views_per_run": protocol.views_per_run,
        "seeds": list(protocol.seeds),
        "moco_views_per_s": MOCO_VIEWS_PER_S,
        "safety_margin": SAFETY_MARGIN,
        "probe_s": round(probe, 1),
        "rows": rows,
        "prepare": prepare,
        "runs_s": round(runs_s, 1),
        "total_s": round(total, 1),
        "total_min": round(total / 60, 1),
        "budget_min": protocol.budget_min,
        "fits": protocol.budget_min is None or total <= protocol.budget_min * 60,
    }
    if protocol.search_views:
        base = protocol.row(protocol.baseline)
        search = sum(train_s(protocol, base, v) + probe for v in protocol.search_views)
        search = (search + probe) * len(protocol.seeds) + sum(prepare.values())
        out["search"] = {
            "views": list(protocol.search_views),
            "total_s": round(search, 1),
            "total_min": round(search / 60, 1),
            "prepare_shared": "the search's prepared folder is the full run's: counted in both",
        }
        out["full_run_at_each_searched_budget_min"] = {
            str(v): round(estimate(protocol.with_views(v), rows_flops=False)["total_min"], 1)
            for v in protocol.search_views
        }
    return out


def record(protocol: Protocol) -> dict[str, Any]:
    """The estimate as docs/mini-repro/budget*.json keep it: what it is, how it was made."""
    return {
        "what": f"The cost of protocol {protocol.name!r} on the {REFERENCE} reference, estimated "
        "from measured per-view costs (mini_repro.budget: every constant with its source); "
        "nothing timed for this estimate.",
        "command": "PYTHONPATH=benchmarks python -m mini_repro --protocol "
        f"{protocol.name} --estimate-budget FILE",
        "estimate": estimate(protocol),
    }


def summary_line(estimate: dict[str, Any]) -> str:
    line = (
        f"protocol {estimate['protocol']}: {estimate['views_per_run']} views per run, "
        f"{len(estimate['seeds'])} seeds; estimated {estimate['total_min']} min on the "
        f"{estimate['reference']}"
    )
    if estimate["budget_min"] is not None:
        line += (
            f" (budget {estimate['budget_min']:.0f} min): "
            f"{'fits' if estimate['fits'] else 'does not fit'}"
        )
    if "search" in estimate:
        line += f"; its search {estimate['search']['total_min']} min"
    return line
