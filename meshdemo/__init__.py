"""meshdemo: code generated from protos/ (never edit by hand)."""
