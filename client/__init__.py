"""Client library for the meshdemo user service: discovery, balancing, pooling, retries."""
