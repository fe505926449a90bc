"""Training: MoCo v2 with non-semantic negatives (``nsneg-train``); reads shards through ``pipeline.contract``.

Evaluation of a trained backbone lives in ``trainer.eval`` (``nsneg-eval``), the paper's
analyses in ``trainer.analysis`` (``nsneg-analyze``).
"""
