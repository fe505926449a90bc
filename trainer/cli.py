"""``nsneg-train``: the command line of pre-training (``nsneg.trainer.train``): MoCo v2, BYOL, SimCLR.

    nsneg-train --negatives shards/ --negatives-kind texture+patch --alpha 2 --out runs/x
    torchrun --nproc-per-node 8 -m nsneg.trainer.cli --negatives shards/ ...

A run folder holds one run: another is refused unless ``--force``; ``--resume`` continues
one and may change only the settings in ``SAFE_ON_RESUME``, saying what changed. The options,
their types, defaults and help are ``TrainConfig``'s fields (``config_options``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import click

from nsneg.trainer.config import TrainConfig, lr_at

# torch, the data pipeline and the trainer are imported by the commands that use them, so that
# ``nsneg-train --help`` does not wait for torch.

#: Settings a resumed run may take from the command line: they change neither the model nor the data.
SAFE_ON_RESUME = (
    "epochs",
    "out",
    "workers",
    "checkpoint_every",
    "max_skip_fraction",
    "compile",
    "compile_backend",
    "log_every",
    "manifest_dirs",
)


def _flag(name: str) -> str:
    """A TrainConfig field's command-line option."""
    return "--manifest-dir" if name == "manifest_dirs" else "--" + name.replace("_", "-")


def _config_option(f: dataclasses.Field):
    """The click option of a ``TrainConfig`` field: its type, default and help come from the field."""
    meta, default = dict(f.metadata), f.default
    help_ = meta.pop("help", "")
    kind = f.type if not isinstance(f.type, str) else f.type
    kwargs: dict[str, Any] = {
        "default": default,
        "help": help_,
        "show_default": default is not None,
    }
    if "choices" in meta:
        kwargs["type"] = click.Choice(meta.pop("choices"))
    elif kind.startswith("bool"):
        # on/off; "bool | None" fields default to None (decided by the device), small_images to
        # None (on at 48 px and below, decided here)
        default = None if f.name == "small_images" else default
        name = f.name.replace("_", "-")
        return click.option(
            f"--{name}/--no-{name}",
            f.name,
            default=default,
            help=help_,
            show_default=default is not None,
        )
    elif kind.startswith("tuple[int, int]"):
        kwargs["type"] = (int, int)
    elif kind.startswith("tuple[str"):
        kwargs.update(multiple=True, show_default=False)
    elif kind.startswith("int"):
        kwargs["type"] = int
    elif kind.startswith("float"):
        kwargs["type"] = float
    if f.name == "out":
        kwargs["type"] = click.Path(file_okay=False)
    return click.option(_flag(f.name), f.name, **kwargs)


def config_options(command):
    """Every ``TrainConfig`` field as an option of ``command``, in the dataclass's order."""
    for f in reversed(dataclasses.fields(TrainConfig)):
        command = _config_option(f)(command)
    return command


@click.command()
@config_options
@click.option(
    "--resume",
    type=click.Path(dir_okay=False),
    default=None,
    help="continue from a checkpoint, with its settings; of these only "
    f"{', '.join(_flag(n) for n in SAFE_ON_RESUME)} may change",
)
@click.option(
    "--force",
    is_flag=True,
    help="start over in an --out that already holds a run (its log and checkpoint go)",
)
@click.option(
    "--verify",
    "reverify",
    is_flag=True,
    help="re-hash every local shard, even those verified before on this machine",
)
@click.option("--device", default=None, help="[default: cuda if available]")
def main(resume, force, reverify, device, small_images, **options) -> None:
    """Pre-train a ResNet (MoCo v2, BYOL or SimCLR) against non-semantic negatives streamed from
    texture shards."""
    import torch.distributed as dist

    from nsneg.trainer import checkpoint, elastic
    from nsneg.trainer.data import BadShards
    from nsneg.trainer.train import Trainer, setup_distributed

    ctx = click.get_current_context()
    options["small_images"] = small_images
    given = {
        n for n in options if ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE
    }
    try:
        if not resume and options["negatives"]:  # a torchrun restart continues its own run
            resume = _elastic_resume(options, small_images)
        if resume:
            state = checkpoint.load(Path(resume))
            config, changes = _resumed_config(state["config"], options, given)
            if state["epoch"] >= config.epochs:
                done = (
                    f"{state['epoch']} of {config.epochs} epochs"
                    if state["epoch"] == config.epochs
                    else f"{state['epoch']} epochs, more than --epochs {config.epochs}"
                )
                click.echo(
                    f"nothing to do: {resume} has finished {done} "
                    f"(pass --epochs N with N > {state['epoch']} to train further)"
                )
                return
            _refuse_other_run(Path(config.out), force, resume)
        else:
            if not options["negatives"]:
                raise click.UsageError("Missing option '--negatives' (or --resume CHECKPOINT)")
            if small_images is None:
                options["small_images"] = options["image_size"] <= 48
            config = TrainConfig(**{**options, "manifest_dirs": tuple(options["manifest_dirs"])})
            _refuse_other_run(Path(config.out), force, None)
        device = setup_distributed() or device
        _verify_once_per_node(config.negatives, reverify)
        trainer = Trainer(config, device=device)
        if resume:
            trainer.restore(Path(resume))
            _report_changes(trainer, changes)
        elif elastic.may_restart():  # a restart finds a checkpoint of this launch, even at step 0
            trainer.save(epoch_complete=False)
        metrics = trainer.fit()
        loss, skipped = over_ranks(
            metrics.get("loss", float("nan")), trainer.skipped, trainer.device
        )
    except (BadShards, FileNotFoundError, ValueError, FloatingPointError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if trainer.rank == 0:
        click.echo(
            f"done: epochs 0-{metrics.get('epoch', config.epochs - 1)}, loss {loss:.4f}"
            f"{' (mean over ' + str(trainer.world) + ' processes)' if trainer.world > 1 else ''}, "
            f"{skipped} bad samples skipped, checkpoint {trainer.checkpoint_path}"
        )


def over_ranks(loss: float, skipped: int, device) -> tuple[float, int]:
    """The last epoch's loss averaged over all processes (each ran the same number of steps) and
    the bad samples they skipped, summed; as given with one process."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return loss, skipped

    found = torch.tensor([loss, float(skipped)], dtype=torch.float64, device=device)
    dist.all_reduce(found)
    return found[0].item() / dist.get_world_size(), int(found[1].item())


def _elastic_resume(options: dict[str, Any], small_images: bool | None) -> str | None:
    """On a torchrun restart, the run folder's checkpoint of this same launch (``nsneg.trainer.elastic``)."""
    from nsneg.trainer import elastic

    if elastic.restart_count() == 0:
        return None
    fields = {**options, "manifest_dirs": tuple(options["manifest_dirs"])}
    if small_images is None:
        fields["small_images"] = options["image_size"] <= 48
    path = elastic.own_checkpoint(TrainConfig(**fields))
    if path is not None and int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"torchrun restart {elastic.restart_count()}: resuming from {path}")
    return str(path) if path else None


def _resumed_config(stored: dict[str, Any], options: dict[str, Any], given: set[str]):
    """The checkpoint's config with the safe settings given on the command line -> (config, {name: (old, new)})."""
    stored = {
        **stored,
        "patch_size_range": tuple(stored["patch_size_range"]),
        "manifest_dirs": tuple(stored["manifest_dirs"]),
    }
    changes = {}
    for name in sorted(given):
        new = tuple(options[name]) if isinstance(options[name], (list, tuple)) else options[name]
        if new == stored.get(name):
            continue
        if name not in SAFE_ON_RESUME:
            raise click.UsageError(
                f"{_flag(name)} cannot change on --resume (the run used {stored.get(name)!r}): "
                f"start a new run in another --out instead"
            )
        changes[name] = (stored[name], new)
    config = TrainConfig(**{**stored, **{name: new for name, (_, new) in changes.items()}})
    return config, changes


def _refuse_other_run(out: Path, force: bool, resume: str | None) -> None:
    """A run folder is written by one run: another is refused, or with ``--force`` its log and checkpoint go."""
    if resume and out.resolve() == Path(resume).resolve().parent:
        return
    existing = [p for p in (out / "checkpoint.pt", out / "log.jsonl") if p.exists()]
    if not existing:
        return
    if not force:
        raise click.UsageError(
            f"{out} already holds a run ({', '.join(p.name for p in existing)}): continue it with "
            f"--resume {out / 'checkpoint.pt'}, choose another --out, or pass --force to start over there"
        )
    if int(os.environ.get("RANK", "0")) == 0:
        for p in existing:
            p.unlink(missing_ok=True)
        click.echo(f"--force: removed {', '.join(str(p) for p in existing)}")


def _verify_once_per_node(negatives: str, reverify: bool) -> None:
    """Local shards are hashed by one process per node (local rank 0, with a progress bar); the other
    ranks wait, then find them in the verified cache."""
    import torch.distributed as dist

    from nsneg.trainer.data import BadShards, verify_local

    if not (Path(negatives) / "manifest.json").is_file():  # no local shard set
        return
    leader = int(os.environ.get("LOCAL_RANK", "0")) == 0
    error = None
    if leader:
        try:
            hashed = verify_local(Path(negatives), reverify=reverify, show_progress=True)
            click.echo(
                f"verified {hashed} train shards of {negatives}"
                if hashed
                else f"{negatives}: train shards verified before on this machine (--verify re-hashes them)"
            )
        except BadShards as e:
            error = e
    if dist.is_initialized():
        dist.barrier()
    if error:
        raise error
    if not leader:
        verify_local(Path(negatives))


def _report_changes(trainer, changes: dict[str, tuple[Any, Any]]) -> None:
    for name, (old, new) in changes.items():
        line = f"resume: {_flag(name)} {old} -> {new}"
        if name == "epochs":
            steps = trainer.steps_per_epoch
            before = lr_at(dataclasses.replace(trainer.config, epochs=old), trainer.step, steps)
            line += (
                f"; the cosine learning-rate schedule now spans {new} epochs "
                f"(lr at step {trainer.step}: {before:.4g} -> {trainer.lr_at(trainer.step):.4g})"
            )
        if trainer.rank == 0:
            click.echo(line)


if __name__ == "__main__":
    main()
