"""The command-line pieces ``nsneg-eval`` and ``nsneg-analyze`` share: library errors as click
errors, the checkpoint, head, feature and loader options, and the bad-sample lines. Importing it
imports no torch (``--help`` stays fast): ``--device`` becomes a ``torch.device`` when parsed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click


@contextmanager
def click_errors() -> Iterator[None]:
    """Library errors about the user's inputs -> ``Error: <message>`` and exit status 1."""
    try:
        yield
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None


def _resolve_device(ctx: click.Context, param: click.Parameter, name: str):
    """``auto`` (CUDA if present), ``cpu``, ``cuda:1``, ... as a ``torch.device``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def options(*decorators: Callable) -> Callable[[Callable], Callable]:
    """Several click options as one decorator, in the order given (as ``--help`` lists them)."""

    def apply(command: Callable) -> Callable:
        for option in reversed(decorators):
            command = option(command)
        return command

    return apply


#: An existing folder, as a ``Path``.
existing_folder = click.Path(exists=True, file_okay=False, path_type=Path)


def checkpoint_option(
    required: bool = True, help: str = "nsneg checkpoint, or a released MoCo .pth.tar"
):
    return click.option(
        "--checkpoint",
        "checkpoint_path",
        required=required,
        type=click.Path(path_type=Path),
        help=help,
    )


def linear_head_option(help: str):
    """``--linear-head`` (required) -> ``head_path``: a head saved by ``nsneg-eval linear``."""
    return click.option(
        "--linear-head", "head_path", required=True, type=click.Path(path_type=Path), help=help
    )


#: DataLoader and device options; ``--device`` arrives as a ``torch.device`` (``auto``: CUDA if present).
loader_options = options(
    click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True),
    click.option(
        "--workers", type=click.IntRange(0), default=2, show_default=True, help="DataLoader workers"
    ),
    click.option(
        "--device",
        default="auto",
        show_default=True,
        callback=_resolve_device,
        help="auto, cpu, cuda, cuda:1, ...",
    ),
)


def feature_options(image_size_default: str) -> Callable[[Callable], Callable]:
    """``--image-size`` (its default described by ``image_size_default``) and the loader options."""
    return options(
        click.option(
            "--image-size",
            type=click.IntRange(1),
            default=None,
            help=f"centre crop size [default: {image_size_default}]",
        ),
        loader_options,
    )


def parsed_option(parse: Callable[[str], Any], text: str, option: str) -> Any:
    try:
        return parse(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=option) from None


def echo_skips(skipped: dict[str, dict[str, Any]]) -> None:
    """One line per shard directory read: how many bad samples were skipped, and why."""
    for side, found in skipped.items():
        reasons = ", ".join(f"{k}: {v}" for k, v in found["skip_reasons"].items())
        click.echo(
            f"{side}: skipped {found['skipped']} bad samples" + (f" ({reasons})" if reasons else "")
        )
