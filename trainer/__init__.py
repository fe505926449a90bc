"""Training: MoCo v2, BYOL and SimCLR with non-semantic negatives (``nsneg-train``, methods in
``nsneg.trainer.methods``, the negatives as functions in ``nsneg.trainer.negatives``); reads shards
through ``nsneg.datasets_manifest.format``.

Evaluation of a trained backbone lives in ``nsneg.trainer.eval`` (``nsneg-eval``), the paper's
analyses in ``nsneg.trainer.analysis`` (``nsneg-analyze``).
"""
