"""Manifests of published shard sets and the code to publish, fetch and verify them (``nsneg-data``).

The shard-set format itself (manifest, shards, sample policy) is ``nsneg.datasets_manifest.format``:
one definition, imported by the pipeline that writes sets and by everything that reads them.
"""
