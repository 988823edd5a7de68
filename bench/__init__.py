"""Benchmarks: ``python -m bench.service`` and ``python -m bench.client``.

Results, with the command and machine, are in docs/PERFORMANCE.md.
"""
