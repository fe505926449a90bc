"""Evaluation fixtures."""

import pytest

from nsneg.trainer.eval.cli import main


@pytest.fixture(scope="package")
def invoke(cli):
    """``invoke(*args)``: run ``nsneg-eval`` in-process."""
    return lambda *args: cli(main, *args)
