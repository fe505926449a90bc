"""Where a run's metrics go: ``OUT/log.jsonl`` (every record), TensorBoard (``OUT/tensorboard``,
always) and, with ``--wandb PROJECT``, Weights & Biases (the ``nsneg[wandb]`` extra).

Scalars, under ``step/`` every ``--log-every`` steps and ``epoch/`` at each epoch's end:
``loss``, ``acc``, ``ns_outrank`` (and a method's own, e.g. BYOL's ``ns_loss``), ``lr``,
``img_per_s`` and ``skipped`` (undecodable samples so far). Once per run, an image grid
``negatives``: a few queries (view 1), each followed by its non-semantic negatives (the
texture with the query's crop and colour, then the patch-shuffled copies).

``tensorboard --logdir runs/`` shows every run; W&B runs are named after the run folder and a
resumed run continues its W&B run (its id is kept in ``OUT/wandb-run-id``).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import torch

from nsneg.trainer.augment import MEAN, STD

GRID_ROWS = 4


def negatives_grid(im_1: torch.Tensor, im_ns: torch.Tensor | None) -> torch.Tensor:
    """[3, H', W'] in [0, 1]: up to ``GRID_ROWS`` rows of a query [3, H, W] followed by its NS
    negatives; im_1: [B, 3, H, W] and im_ns: [B, N, 3, H, W] normalised as the network sees them."""
    from torchvision.utils import make_grid

    rows = min(GRID_ROWS, im_1.shape[0])
    views = [im_1[:rows].unsqueeze(1)]  # [R, 1, 3, H, W]
    if im_ns is not None:
        views.append(im_ns[:rows])
    tiles = torch.cat(views, dim=1).detach().float().cpu()  # [R, 1 + N, 3, H, W]
    columns = tiles.shape[1]
    tiles = (tiles.flatten(0, 1) * STD + MEAN).clamp(0, 1)  # [R (1 + N), 3, H, W]
    return make_grid(tiles, nrow=columns, padding=2, pad_value=1.0)


class MetricsLog:
    """Records as JSON lines; their numbers as TensorBoard (and W&B) scalars."""

    def __init__(self, out: Path, wandb_project: str | None = None, config: dict | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.file = open(out / "log.jsonl", "a")
        self.tensorboard = SummaryWriter(str(out / "tensorboard"))
        self.wandb = None
        if wandb_project:
            self.wandb = _start_wandb(out, wandb_project, config or {})

    def write(self, record: dict[str, Any], tag: str, step: int) -> None:
        self.file.write(json.dumps(record) + "\n")
        scalars = {
            f"{tag}/{name}": value
            for name, value in record.items()
            if isinstance(value, (int, float))
            and not isinstance(value, bool)
            and name not in ("epoch", "step")
        }
        for name, value in scalars.items():
            self.tensorboard.add_scalar(name, value, step)
        if self.wandb:
            self.wandb.log({**scalars, f"{tag}/index": step})

    def image(self, name: str, grid: torch.Tensor, step: int) -> None:
        """grid: [3, H, W] in [0, 1]."""
        self.tensorboard.add_image(name, grid, step)
        if self.wandb:
            import wandb

            self.wandb.log({name: wandb.Image(grid.permute(1, 2, 0).numpy())})

    def flush(self) -> None:
        self.file.flush()
        self.tensorboard.flush()

    def close(self) -> None:
        self.file.close()
        self.tensorboard.close()
        if self.wandb:
            self.wandb.finish()


def _start_wandb(out: Path, project: str, config: dict):
    try:
        import wandb
    except ImportError:
        raise ValueError("--wandb needs wandb: pip install 'nsneg[wandb]'") from None
    id_file = out / "wandb-run-id"
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    return wandb.init(
        project=project,
        name=out.name,
        id=run_id,
        resume="allow",
        dir=str(out),
        config=config,
    )
