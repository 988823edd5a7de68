"""Service benchmarks: ``python -m bench.service`` (see docs/PERFORMANCE.md)."""
