"""Benchmarks; their outputs live under ``benchmarks/results/``."""
