"""The contract's constants, read from the generated descriptors of ``meshdemo.v1``.

Service and client both import these instead of copying them.
"""

from __future__ import annotations

from meshdemo.v1 import user_pb2

__all__ = ["SERVICE_NAME"]

#: The full name of the user service, e.g. for health and for span names.
SERVICE_NAME: str = user_pb2.DESCRIPTOR.services_by_name["UserService"].full_name
