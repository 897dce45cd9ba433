"""Measurements run by hand (each module says how); results in BENCHMARKS.md."""
