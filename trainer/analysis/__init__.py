"""The paper's analyses of what a representation relies on (``nsneg-analyze``).

``categories`` (Geirhos' 16 categories and the fine groups as wnid tables), ``texture_classes``
(per-class texture recognisability), ``shape_bias`` (cue-conflict shape bias), ``cue_conflict``
(the stimuli: read from a folder or made from shards), ``cli``. Features, probes and report
files come from ``nsneg.trainer.eval``.
"""
