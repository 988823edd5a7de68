"""The meshdemo user service: a grpc.aio server for the meshdemo.v1 contract."""
