"""Typed views of grpc.aio behaviour that grpc-stubs 1.53 describes wrongly.

grpc-stubs has no ``grpc.aio.EOF`` and types ``read()`` of a streaming call as
``object | Response`` (its ``EOFType`` is ``object``), so nothing narrows a reply.
These helpers keep the tests typed without a ``type: ignore`` at every read.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

import grpc

R = TypeVar("R")

# Missing from grpc-stubs; at run time the sentinel that read() returns at the end.
EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


async def read(call: grpc.aio.StreamStreamCall[Any, R] | grpc.aio.UnaryStreamCall[Any, R]) -> R:
    """The next message of ``call``; fails when the stream has ended instead."""
    reply = await call.read()
    assert reply is not EOF, "the stream ended where a message was expected"
    # Not EOF, so a message: the stubs' ``object | R`` cannot say so.
    return cast(R, reply)
