"""A controlled miniature of the paper's experiment, end to end through the real code.

Question: does self-supervised pre-training (MoCo v2, BYOL) against non-semantic negatives
(textures, patch-shuffled views) learn features that lean on shape rather than texture, and
does that pay off out of domain? Measured on a procedural world where shape and texture are
known (``world``); every row always runs, and the report leads with each row's paired effect
and its 95 % interval:

* ``protocol``: the world, budget, rows, seeds, learning curve and searched budgets, fixed in code;
* ``world``: the seeded shape/texture image generator;
* ``prepare``: world + textures by the Ray job (CPU), and the textures' noise ratio;
* ``pretrain``: one run with the real trainer (keeping the curve's backbones) and its probe;
* ``run``: the ``train`` stage (CPU or CUDA, no Ray): every seed x row, then the report;
* ``search``: the ``search`` stage: the views per run, from the baseline and the untrained network;
* ``sanity``: the facts about the baseline, and the rule the search applies;
* ``curve``: the learning curve's probes, table and plot;
* ``readings``: the representation reading and the shortcut controls on held-out images;
* ``report``: paired differences with 95 % t-intervals, findings, tables and plot;
* ``budget``: the protocols' cost on the AMD EPYC reference, from measured per-view costs.

    python -m mini_repro [--protocol full|byol|long|gpu|quick] [--stage all|prepare|train|search]
        [--device cpu|cuda] [--out DIR] [--data PREPARED_DIR]
"""
