"""Manifests of published shard sets and the code to publish, fetch and verify them (``nsneg-data``).

The manifest format is ``nsneg.pipeline.contract``'s: one definition, not two.
"""
