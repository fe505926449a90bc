"""Training: MoCo v2 with non-semantic negatives (``nsneg-train``); reads shards through ``nsneg.pipeline.contract``.

Evaluation of a trained backbone lives in ``nsneg.trainer.eval`` (``nsneg-eval``), the paper's
analyses in ``nsneg.trainer.analysis`` (``nsneg-analyze``).
"""
