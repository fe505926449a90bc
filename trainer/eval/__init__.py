"""Evaluation of a frozen backbone (``nsneg-eval``): features, kNN and linear probes, robustness.

``features`` (eval view, datasets, extraction, backbone loading), ``probes`` (kNN, linear probe,
heads on disk), ``corruptions`` (ImageNet-C on tensors), ``robustness`` (out-of-domain top-1,
returned as a report), ``robustness_report`` and ``report`` (tables, plots, files), ``cli``.
"""
