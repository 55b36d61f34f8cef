"""Benchmarks: the pytest-benchmark suite and the jdupes comparison script."""
