"""Service benchmarks: ``python -m bench.service`` (see bench/service/RESULTS.md)."""
