"""MoCo v2 with non-semantic negatives (``nsneg-train``); reads shards through ``pipeline.contract``."""
