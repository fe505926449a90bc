"""Runs under torchrun's elastic agent: a restarted worker group continues its own run by itself.

With ``--max-restarts N`` torchrun restarts every worker of the group when one fails (a process
killed, a node lost); the new processes see ``TORCHELASTIC_RESTART_COUNT`` > 0 and the launch's
``TORCHELASTIC_RUN_ID`` (``--rdzv-id``; a fresh one per launch with ``--standalone``).

* A run started under an agent that may restart it writes its state at step 0, so a restart
  always finds a checkpoint of its own, and every checkpoint carries the launch's id.
* A restarted worker resumes from ``OUT/checkpoint.pt`` when that checkpoint carries this
  launch's id and the same settings (``own_checkpoint``): no ``--resume`` by hand, and the run
  ends with the step count of an uninterrupted one.
* Anything else in ``OUT`` (another run, another launch's) is treated as on a first start:
  refused unless ``--resume`` or ``--force``. Nothing of a user's work is overwritten unasked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nsneg.trainer import checkpoint
from nsneg.trainer.config import to_dict


def run_id() -> str | None:
    """The elastic launch's id, or None outside torchrun."""
    return os.environ.get("TORCHELASTIC_RUN_ID")


def restart_count() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def may_restart() -> bool:
    """Whether torchrun may restart this worker group (``--max-restarts`` > 0)."""
    return run_id() is not None and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0


def _settings(config: Any) -> dict[str, Any]:
    """A config's fields as stored in a checkpoint (tuples as lists)."""
    fields = config if isinstance(config, dict) else to_dict(config)
    return json.loads(json.dumps(fields))


def own_checkpoint(config: Any) -> Path | None:
    """On a restarted worker, ``OUT/checkpoint.pt`` of this launch with ``config``'s settings; else None."""
    if restart_count() == 0 or run_id() is None:
        return None
    path = Path(config.out) / "checkpoint.pt"
    if not path.is_file():
        return None
    try:
        state = checkpoint.load(path)
    except (ValueError, OSError, RuntimeError):
        return None  # not a checkpoint this run wrote: the first-start rules decide
    if state.get("elastic_run_id") != run_id():
        return None
    if _settings(state.get("config", {})) != _settings(config):
        return None
    return path
