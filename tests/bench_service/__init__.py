"""Smoke tests of the service benchmarks (bench/service)."""
