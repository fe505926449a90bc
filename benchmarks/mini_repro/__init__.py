"""A controlled miniature of the paper's experiment, end to end through the real code.

Question: does MoCo v2 trained against non-semantic negatives (textures, patch-shuffled
views) learn features that lean on shape rather than texture, and does that pay off out
of domain? Measured on a procedural world where shape and texture are known
(``world``), once a sanity gate has shown that the MoCo baseline itself learns shape:

* ``protocol``: the world, budget, variants, seeds and gate, fixed in code;
* ``world``: the seeded shape/texture image generator;
* ``run``: the stages -- ``prepare`` (world + textures by the Ray job, CPU) and ``train``
  (pre-training + probes, CPU or CUDA, no Ray);
* ``report``: mean ± std, paired differences with 95 % t-intervals, table and plot.

    python -m mini_repro [--protocol full|gpu|quick] [--stage all|prepare|train] [--device cpu|cuda]
"""
