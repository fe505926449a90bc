"""``nsneg-train``: the command line of pre-training (``nsneg.trainer.train``): MoCo v2, BYOL, SimCLR.

    nsneg-train --negatives shards/ --negatives-kind texture+patch --alpha 2 --out runs/x
    torchrun --nproc-per-node 8 -m nsneg.trainer.cli --negatives shards/ ...

    nsneg-train --config run.yaml --epochs 100          # a YAML file; options override it
    nsneg-train --resume runs/x/checkpoint.pt --negatives /mnt/other/shards   # the run moved

A run folder holds one run: another is refused unless ``--force``; ``--resume`` continues
one and may change only the settings in ``SAFE_ON_RESUME`` (and the data's path, where its
identity is the same), saying what changed. The options, their types, defaults and help are
``TrainConfig``'s fields and every method's settings (``config_options``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import click

from nsneg.trainer.config import RESOLVED_NAME, from_dict, read_yaml, run_fields
from nsneg.trainer.methods import METHODS, settings_class_of

# torch, the data pipeline and the trainer are imported by the commands that use them, so that
# ``nsneg-train --help`` does not wait for torch.

#: Settings a resumed run may take from the command line: they change neither the model nor the
#: data (``--negatives`` may change too where it names the same data: ``data_identity``).
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
    "wandb",
)
#: what a run folder holds; ``--force`` removes them
RUN_FILES = ("checkpoint.pt", "log.jsonl", RESOLVED_NAME, "tensorboard", "wandb-run-id")


def method_options() -> dict[str, tuple[str, dataclasses.Field]]:
    """``{option name: (method, settings field)}``: ``moco_k`` is MoCo's ``k`` (``--moco-k``)."""
    return {
        f"{name}_{f.name}": (name, f)
        for name in METHODS
        for f in dataclasses.fields(settings_class_of(name))
    }


def _flag(name: str) -> str:
    """A setting's command-line option."""
    return "--manifest-dir" if name == "manifest_dirs" else "--" + name.replace("_", "-")


def _option(f: dataclasses.Field, name: str):
    """The click option of a dataclass field: its type, default and help come from the field."""
    meta, default = dict(f.metadata), f.default
    help_ = meta.pop("help", "")
    kind = str(f.type)
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
        default = None if name == "small_images" else default
        flag = name.replace("_", "-")
        return click.option(
            f"--{flag}/--no-{flag}",
            name,
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
    if name == "out":
        kwargs["type"] = click.Path(file_okay=False)
    return click.option(_flag(name), name, **kwargs)


def config_options(command):
    """Every ``TrainConfig`` setting, then every method's (``--moco-k``, ...), as options of ``command``."""
    fields = [(f, f.name) for f in run_fields()]
    fields += [(f, name) for name, (_, f) in method_options().items()]
    for f, name in reversed(fields):
        command = _option(f, name)(command)
    return command


@click.command()
@config_options
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML file of settings (any TrainConfig field, a section per method; a run's "
    "config.yaml reruns it); options given here override it",
)
@click.option(
    "--resume",
    type=click.Path(dir_okay=False),
    default=None,
    help="continue from a checkpoint, with its settings; of these only "
    f"{', '.join(_flag(n) for n in SAFE_ON_RESUME)} may change, and --negatives where it is the "
    "same data (same shard hashes) at another path",
)
@click.option(
    "--force",
    is_flag=True,
    help="start over in an --out that already holds a run (its log, checkpoint, config and events go)",
)
@click.option(
    "--verify",
    "reverify",
    is_flag=True,
    help="re-hash every local shard, even those verified before on this machine",
)
@click.option("--device", default=None, help="[default: cuda if available]")
def main(config_file, resume, force, reverify, device, **options) -> None:
    """Pre-train a backbone (MoCo v2, BYOL or SimCLR) against non-semantic negatives streamed from
    texture shards."""
    import torch.distributed as dist

    from nsneg.trainer import checkpoint, elastic
    from nsneg.trainer.backbones import check_arch
    from nsneg.trainer.data import BadShards
    from nsneg.trainer.distributed import setup_distributed
    from nsneg.trainer.train import Trainer

    ctx = click.get_current_context()
    given = {
        n for n in options if ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE
    }
    try:
        from_file = read_yaml(Path(config_file)) if config_file else {}
        if not resume:  # a torchrun restart continues its own run
            resume = _elastic_resume(_requested(from_file, options, given, "moco"))
        state = checkpoint.load(Path(resume)) if resume else None
        default_method = state["config"]["method"] if state else "moco"
        requested = _requested(from_file, options, given, default_method)
        if state:
            config, changes = _resumed_config(state, requested, resume)
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
            if not requested.get("negatives"):
                raise click.UsageError("Missing option '--negatives' (or --resume CHECKPOINT)")
            if requested.get("small_images") is None:
                requested["small_images"] = requested.get("image_size", 224) <= 48
            config = from_dict(requested, "options")
            check_arch(config.arch)
            if from_file.get("data"):
                _check_same_data(from_file["data"], config, f"--config {config_file}")
            _refuse_other_run(Path(config.out), force, None)
        device = setup_distributed() or device
        try:
            _verify_once_per_node(config.negatives, reverify)
            trainer = Trainer(config, device=device)
        except (BadShards, FileNotFoundError) as e:
            moved = resume and "negatives" not in changes and not Path(config.negatives).exists()
            if moved:  # the run's data may be elsewhere now
                raise BadShards(
                    f"{e}\n(the run read its data from {config.negatives}; where the data has "
                    "moved, resume with --negatives NEW_PATH: it is checked to be the same data)"
                ) from None
            raise
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


def _elastic_resume(requested: dict[str, Any]) -> str | None:
    """On a torchrun restart, the run folder's checkpoint of this same launch (``nsneg.trainer.elastic``)."""
    from nsneg.trainer import elastic

    if elastic.restart_count() == 0 or not requested.get("negatives"):
        return None
    if requested.get("small_images") is None:
        requested = {**requested, "small_images": requested.get("image_size", 224) <= 48}
    path = elastic.own_checkpoint(from_dict(requested, "options"))
    if path is not None and int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"torchrun restart {elastic.restart_count()}: resuming from {path}")
    return str(path) if path else None


def _requested(
    from_file: dict[str, Any], options: dict[str, Any], given: set[str], default_method: str
) -> dict[str, Any]:
    """The settings asked for, in the YAML form: the ``--config`` file's, overridden by the
    options given on the command line; defaults are left to ``TrainConfig`` (or the checkpoint)."""
    requested = {k: v for k, v in from_file.items() if k not in METHODS}
    for name in given & {f.name for f in run_fields()}:
        value = options[name]
        requested[name] = list(value) if isinstance(value, tuple) else value
    method = requested.get("method", default_method)
    section = dict(from_file.get(method) or {})
    for name, (owner, f) in method_options().items():
        if name not in given:
            continue
        if owner != method:
            raise click.UsageError(
                f"{_flag(name)} is a setting of --method {owner}; this run is --method {method}"
            )
        section[f.name] = options[name]
    return {**requested, method: section}


def _check_same_data(stored: dict[str, Any], config, where: str) -> None:
    """Refuse data other than the ``stored`` identity (same data at another path is fine)."""
    from nsneg.trainer.data_identity import data_identity, describe, differences

    found = data_identity(config.negatives, tuple(config.manifest_dirs))
    if problems := differences(stored, found):
        raise click.UsageError(
            f"--negatives {config.negatives} is not the data {where} was trained on "
            f"({describe(stored)}): {'; '.join(problems)}. Give the same data, or start a new "
            "run without the stored 'data' entry"
        )


def _resumed_config(state: dict[str, Any], requested: dict[str, Any], resume: str):
    """The checkpoint's config with the settings asked for -> (config, {name: (old, new)}).

    Only ``SAFE_ON_RESUME`` settings may change, and ``negatives`` where its data is the
    checkpoint's (``data_identity``): a run moves to another machine or mount point."""
    stored = state["config"]
    method = stored["method"]
    changes: dict[str, tuple[Any, Any]] = {}
    for name, new in requested.items():
        if name in METHODS or name in ("data", "nsneg_version"):
            continue
        old = stored.get(name)
        if new == old or (isinstance(old, list) and list(new or ()) == old):
            continue
        if name == "negatives":
            _check_same_data(state["data"], from_dict({**stored, name: new}), resume)
        elif name not in SAFE_ON_RESUME:
            raise click.UsageError(
                f"{_flag(name)} cannot change on --resume (the run used {old!r}): "
                f"start a new run in another --out instead"
            )
        changes[name] = (old, new)
    for field_name, new in (requested.get(method) or {}).items():
        old = stored[method].get(field_name)
        if new != old:
            raise click.UsageError(
                f"{_flag(f'{method}_{field_name}')} cannot change on --resume (the run used "
                f"{old!r}): start a new run in another --out instead"
            )
    config = from_dict({**stored, **{name: new for name, (_, new) in changes.items()}})
    return config, changes


def _refuse_other_run(out: Path, force: bool, resume: str | None) -> None:
    """A run folder is written by one run: another is refused, or with ``--force`` its log and checkpoint go."""
    if resume and out.resolve() == Path(resume).resolve().parent:
        return
    existing = [out / name for name in RUN_FILES if (out / name).exists()]
    if not existing:
        return
    if not force:
        raise click.UsageError(
            f"{out} already holds a run ({', '.join(p.name for p in existing)}): continue it with "
            f"--resume {out / 'checkpoint.pt'}, choose another --out, or pass --force to start over there"
        )
    if int(os.environ.get("RANK", "0")) == 0:
        for p in existing:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
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
    from nsneg.trainer.data_identity import describe
    from nsneg.trainer.optim import lr_at

    for name, (old, new) in changes.items():
        line = f"resume: {_flag(name)} {old} -> {new}"
        if name == "negatives":
            line += f" (the same data: {describe(trainer.data)})"
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
