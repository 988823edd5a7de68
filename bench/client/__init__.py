"""Client benchmarks: ours vs grpcio balancing, in the same run."""
