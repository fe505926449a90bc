"""Benchmarks and the mini reproduction (``python -m benchmarks.mini_repro``)."""
