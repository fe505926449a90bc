"""What a run learned with, read from its checkpoint's config: the settings the trainer actually
used (defaults resolved by ``TrainConfig`` itself), runs of equal settings grouped as seeds of one
configuration, a short label per configuration, and the settings that tell configurations apart.

Method settings are compared generically: nested settings (a dataclass or dict per method) are
flattened to ``"<group>.<field>"``, and the settings of other methods than the run's
(``byol_*``, ``simclr.*``, ... on a MoCo run) are left out, so either config shape works.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

#: Config fields that do not change what a run learns (paths, logging, speed): not part of the
#: configuration that groups seeds.
BOOKKEEPING = frozenset(
    {
        "seed",
        "out",
        "negatives",
        "manifest_dirs",
        "workers",
        "log_every",
        "checkpoint_every",
        "compile",
        "compile_backend",
        "channels_last",
        "bf16",
        "shuffle_buffer",
        "max_skip_fraction",
        "wandb",
        "nsneg_version",
        "data",
    }
)

#: Fields the trainer leaves None to mean "the method's default", and the ``TrainConfig``
#: attribute that holds the value it uses.
RESOLVED = {
    "lr": "base_lr",
    "optimizer": "optimizer_name",
    "weight_decay": "weight_decay_value",
    "warmup_epochs": "warmup",
}


def flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level, ``{"moco": {"k": 1}} -> {"moco.k": 1}``; lists become tuples."""
    found: dict[str, Any] = {}
    for key, value in settings.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, dict):
            found.update(flatten(value, f"{prefix}{key}."))
        else:
            found[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return found


def used_settings(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config as the trainer ran it: rebuilt as a ``TrainConfig`` from its YAML
    form (``nsneg.trainer.config``; missing fields take today's defaults, the method's settings
    under its name) with lr, optimizer, weight decay and warm-up resolved by its own properties;
    the config as stored when it is not one (a released checkpoint)."""
    from nsneg.trainer.config import INFO_KEYS, from_dict, run_fields, to_dict
    from nsneg.trainer.methods import METHODS

    names = {f.name for f in run_fields()} | set(METHODS) | set(INFO_KEYS)
    known = {k: v for k, v in config.items() if k in names}
    try:
        train_config = from_dict(known)
        used = {**config, **to_dict(train_config)}
        for field, attribute in RESOLVED.items():
            if field in used:
                used[field] = getattr(train_config, attribute)
    except Exception:  # a config this version cannot rebuild: show it as stored
        used = dict(config)
    return used


def configuration(config: dict[str, Any]) -> dict[str, Any]:
    """What a run's config says about what it learns: its settings as used, flattened, without
    ``BOOKKEEPING`` and other methods' settings; ``method`` is ``moco`` when the checkpoint
    predates other methods."""
    from nsneg.trainer.methods import METHODS

    settings = flatten(used_settings({"method": "moco", **config}))
    method = settings["method"]
    others = tuple(f"{m}{sep}" for m in METHODS if m != method for sep in ("_", "."))
    found = {
        k: v
        for k, v in settings.items()
        if k.split(".")[0] not in BOOKKEEPING and not k.startswith(others)
    }
    return dict(sorted(found.items()))


def configuration_label(conf: dict[str, Any]) -> str:
    """``MoCo``, ``MoCo +Texture α=2``, ``MoCo +Patch α=3``, ... from a configuration."""
    method = conf.get("method", "moco")
    base = {"moco": "MoCo"}.get(method, method)
    kind = conf.get("negatives_kind")
    if kind in (None, "none"):
        return base
    names = {"texture": "+Texture", "patch": "+Patch", "texture+patch": "+Texture+Patch"}
    return f"{base} {names.get(kind, '+' + str(kind))} α={conf.get('alpha', '?')}"


def differing(configurations: Sequence[dict[str, Any]]) -> list[str]:
    """The settings whose values are not the same in every configuration (a setting one lacks
    counts as differing), sorted."""
    keys = sorted({k for conf in configurations for k in conf})
    return [
        k
        for k in keys
        if len({json.dumps(conf.get(k, "<absent>"), default=str) for conf in configurations}) > 1
    ]


def group_runs(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of equal configuration in one group, in first-seen order; groups whose labels
    coincide get the fields that tell them apart appended."""
    groups: dict[str, dict[str, Any]] = {}
    for run in runs:
        key = json.dumps(run["configuration"], sort_keys=True, default=str)
        groups.setdefault(key, {"configuration": run["configuration"], "runs": []})["runs"].append(
            run
        )
    found = list(groups.values())
    for group in found:
        group["label"] = configuration_label(group["configuration"])
    suffixes = {}
    for group in found:
        twins = [g for g in found if g["label"] == group["label"]]
        if len(twins) > 1:
            fields = differing([g["configuration"] for g in twins])
            suffixes[id(group)] = ", ".join(f"{k}={group['configuration'].get(k)}" for k in fields)
    for group in found:
        if suffixes.get(id(group)):
            group["label"] = f"{group['label']} ({suffixes[id(group)]})"
    return found
