"""The built-in methods' own settings (``Method.Settings``): one small dataclass per method, each
field with its default and its command-line help (``--moco-k``, ...).

They live here, apart from the methods' modules, for one reason: this module imports no torch, so
``nsneg-train --help`` lists every option at once. A method of your own keeps its ``Settings`` in
its own module (``setting`` fields, a ``small()`` classmethod for the tests); its options then cost
that module's import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def setting(default: Any, help: str = "") -> Any:
    """A field of a method's settings dataclass, with its command-line help."""
    return field(default=default, metadata={"help": help})


@dataclass
class NoSettings:
    """A method without settings of its own."""

    @classmethod
    def small(cls) -> NoSettings:
        return cls()


@dataclass
class MoCoSettings:
    dim: int = setting(128, "output size of the MLP head (the keys' dimension)")
    k: int = setting(16384, "queue size, a multiple of the batch")
    m: float = setting(0.99, "key encoder momentum")
    t: float = setting(0.2, "temperature")

    @classmethod
    def small(cls) -> MoCoSettings:
        return cls(dim=16, k=16)


@dataclass
class BYOLSettings:
    proj_hidden_dim: int = setting(4096, "projector's hidden layer")
    proj_dim: int = setting(256, "projection size")
    pred_hidden_dim: int = setting(8192, "predictor's hidden layer")
    tau_base: float = setting(0.99, "target momentum at the start; it rises to 1 along a cosine")
    ns_t: float = setting(0.2, "temperature of the non-semantic term")

    @classmethod
    def small(cls) -> BYOLSettings:
        return cls(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32)


@dataclass
class SimCLRSettings:
    proj_hidden_dim: int = setting(4096, "projector's hidden layer")
    proj_dim: int = setting(512, "projection size")
    t: float = setting(0.2, "NT-Xent temperature")

    @classmethod
    def small(cls) -> SimCLRSettings:
        return cls(proj_hidden_dim=32, proj_dim=16)
