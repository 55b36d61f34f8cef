"""Benchmarks and gates: synthetic trees, the work and time gates, peer comparisons."""
