"""Benchmarks, installed as ``arena_eval.benchmarks`` so that ``arena-eval bench`` works anywhere.

Every benchmark measures a baseline in the same run and prints ratios:
absolute times on shared machines drift by 2x from run to run.
"""
