"""Pre-training methods behind one interface (``Method``): MoCo v2, BYOL, SimCLR, each with
non-semantic negatives. ``METHODS[name]`` is the class ``nsneg-train --method name`` trains: a new method is its
module (the ``Method`` subclass and its ``Settings``) and one line here."""

from nsneg.trainer.methods.base import Method, OptimDefaults
from nsneg.trainer.methods.byol import BYOL
from nsneg.trainer.methods.moco import MoCo
from nsneg.trainer.methods.simclr import SimCLR

METHODS: dict[str, type[Method]] = {"moco": MoCo, "byol": BYOL, "simclr": SimCLR}

__all__ = ["BYOL", "METHODS", "Method", "MoCo", "OptimDefaults", "SimCLR"]
