"""Benchmarks of the meshdemo project (``python -m bench.client`` for the client's)."""
