"""Pre-training methods behind one interface (``Method``): MoCo v2, BYOL, SimCLR, each with
non-semantic negatives. ``METHODS[name]`` is the class ``nsneg-train --method name`` trains; a
new method is its module (the ``Method`` subclass and its ``Settings``) and one line in
``REGISTRY``.

``METHODS`` lists each method as ``"module:Class"`` and imports a method's module (and torch) when
the class is first asked for, so the names are known without torch (``nsneg-train --help``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import Any

#: name -> where its class is, ``"module:Class"``: the method registry.
REGISTRY = {
    "moco": "nsneg.trainer.methods.moco:MoCo",
    "byol": "nsneg.trainer.methods.byol:BYOL",
    "simclr": "nsneg.trainer.methods.simclr:SimCLR",
}


#: name -> where the built-in methods' settings are: a module without torch (``settings``), so
#: that the command line's options are known without importing torch.
SETTINGS = {
    "moco": "nsneg.trainer.methods.settings:MoCoSettings",
    "byol": "nsneg.trainer.methods.settings:BYOLSettings",
    "simclr": "nsneg.trainer.methods.settings:SimCLRSettings",
}


def settings_class_of(name: str) -> type:
    """The settings dataclass of method ``name`` (``Method.Settings``), torch-free where it can."""
    if name in SETTINGS:
        return _load(SETTINGS[name])
    return METHODS[name].Settings


def _load(where: str) -> Any:
    module, name = where.split(":")
    return getattr(import_module(module), name)


class _Methods(Mapping):
    """``REGISTRY`` as a mapping name -> class, each class imported when first looked up."""

    def __getitem__(self, name: str) -> type:
        return _load(REGISTRY[name])

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


METHODS: Mapping[str, type] = _Methods()

_EXPORTS = {
    "Method": "nsneg.trainer.methods.base:Method",
    "OptimDefaults": "nsneg.trainer.methods.base:OptimDefaults",
    "MoCo": REGISTRY["moco"],
    "BYOL": REGISTRY["byol"],
    "SimCLR": REGISTRY["simclr"],
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return _load(_EXPORTS[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BYOL",
    "METHODS",
    "REGISTRY",
    "SETTINGS",
    "Method",
    "MoCo",
    "OptimDefaults",
    "SimCLR",
    "settings_class_of",
]
