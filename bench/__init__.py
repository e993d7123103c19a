"""Benchmarks: ``python -m bench [name ...] [--out DIR]`` (``make bench``), JSON out.

Figures are medians over repeats, with ratios against a baseline measured in the same run,
so numbers from a noisy machine stay comparable. Nothing here is asserted in tests.
"""
