"""A controlled miniature of the paper's experiment, end to end through the real code.

Question: does self-supervised pre-training (MoCo v2, BYOL) against non-semantic negatives
(textures, patch-shuffled views) learn features that lean on shape rather than texture, and
does that pay off out of domain? Measured on a procedural world where shape and texture are
known (``world``); every row always runs, and the report leads with each row's paired effect
and its 95 % interval:

* ``protocol``: the world, budget, rows, seeds and sanity readings, fixed in code;
* ``world``: the seeded shape/texture image generator;
* ``run``: the stages -- ``prepare`` (world + textures by the Ray job, CPU) and ``train``
  (pre-training, probes and readings, CPU or CUDA, no Ray);
* ``readings``: the representation reading and the shortcut controls on held-out images;
* ``report``: paired differences with 95 % t-intervals, findings, tables and plot;
* ``budget``: the protocol's cost, estimated from FLOPs per view.

    python -m mini_repro [--protocol full|gpu|quick] [--stage all|prepare|train] [--device cpu|cuda]
"""
