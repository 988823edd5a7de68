"""Benchmarks of the local mesh (``python -m bench.mesh``); results in docs/PERFORMANCE.md."""
