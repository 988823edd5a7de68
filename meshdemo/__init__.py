"""meshdemo: what the service and the client share.

``meshdemo/v1/`` is generated from protos/ (never edit by hand);
``meshdemo/telemetry.py`` is hand-written: the one OpenTelemetry set-up of both
processes.
"""
