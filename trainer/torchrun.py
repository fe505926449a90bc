"""``python -m nsneg.trainer.torchrun``: torchrun itself (``torch.distributed.run``, the same
options), except that a Ctrl-C or SIGTERM ends in one line instead of torchrun's
``SignalException`` traceback::

    python -m nsneg.trainer.torchrun --nproc-per-node 8 -m nsneg.trainer.cli --negatives ...

On the signal, torchrun passes it on to its workers; each finishes its step, writes the
checkpoint, and rank 0 prints the ``stopped ... resume with`` line (``nsneg.trainer.train``).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Run torchrun with ``argv`` (default: the command line); a signal exits with 128 + signal."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except SignalException as e:
        print(
            f"torchrun: stopped by signal {int(e.sigval)}; its workers stopped after their step "
            "(rank 0's line above says where the checkpoint is and how to resume)",
            file=sys.stderr,
        )
        raise SystemExit(128 + int(e.sigval)) from None


if __name__ == "__main__":
    main()
