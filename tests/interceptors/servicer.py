"""A TEST servicer of meshdemo.v1.UserService whose every behavior the test picks.

Commands travel in the request fields (GetUser ``id``, CreateUser ``name``,
ListUsers ``page_token``, BatchCreateUsers and Chat per message). The
servicer records what it saw (principal, trace id) so tests can check what
the interceptors handed it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry import trace

from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.auth import Principal, current_principal
from service.errors import FieldViolation, InvalidArgument, NotFound, ResourceExhausted

#: A command making the handler sleep until cancelled (bounded to 30 s).
SLEEP = "sleep"
#: A ServiceError (InvalidArgument with BadRequest details).
INVALID = "invalid"
#: An unexpected exception (RuntimeError).
BOOM = "boom"
#: context.abort(NOT_FOUND) from the handler itself.
ABORT = "abort"
#: NotImplementedError.
NOT_IMPLEMENTED = "not-implemented"
#: ResourceExhausted with retry pushback in the trailing metadata.
EXHAUSTED = "exhausted"
#: NotFound with ResourceInfo details.
MISSING = "missing"
#: Returns normally after context.set_code(NOT_FOUND).
SET_CODE = "set-code"

_SLEEP_CAP_S = 30.0


@dataclass
class Seen:
    """What the handlers observed, call by call."""

    principals: list[Principal | None] = field(default_factory=list)
    trace_ids: list[int] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)


def invalid() -> InvalidArgument:
    """The InvalidArgument the servicer raises for INVALID."""
    return InvalidArgument(
        "bad user", [FieldViolation("name", "must not be empty"), FieldViolation("age", "too old")]
    )


async def act(command: str, context: Any) -> None:
    """Perform ``command``; return normally for anything else."""
    if command == SLEEP:
        await asyncio.sleep(_SLEEP_CAP_S)
    elif command == INVALID:
        raise invalid()
    elif command == BOOM:
        raise RuntimeError("secret internals: db password is hunter2")
    elif command == ABORT:
        await context.abort(grpc.StatusCode.NOT_FOUND, "aborted by handler")
    elif command == NOT_IMPLEMENTED:
        raise NotImplementedError
    elif command == EXHAUSTED:
        raise ResourceExhausted("slow down", retry_after_ms=250)
    elif command == MISSING:
        raise NotFound("user", "u-1")


def _user(name: str) -> user_pb2.User:
    return user_pb2.User(id=f"id-{name}", name=name)


class TestServicer(user_pb2_grpc.UserServiceServicer):
    """Answers every UserService method; behaviors picked by the request."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.seen = Seen()

    def _observe(self) -> None:
        self.seen.principals.append(current_principal.get())
        self.seen.trace_ids.append(trace.get_current_span().get_span_context().trace_id)
        self.seen.started.set()

    async def GetUser(self, request: user_pb2.GetUserRequest, context: Any) -> Any:
        """Performs ``id``; answers with the caller's ``sub`` as the user's email."""
        self._observe()
        if request.id == SET_CODE:
            context.set_code(grpc.StatusCode.NOT_FOUND)
            return user_pb2.GetUserResponse()
        await act(request.id, context)
        user = _user(request.id)
        principal = current_principal.get()
        user.email = "" if principal is None else principal.sub
        return user_pb2.GetUserResponse(user=user)

    async def CreateUser(self, request: user_pb2.CreateUserRequest, context: Any) -> Any:
        self._observe()
        await act(request.name, context)
        return user_pb2.CreateUserResponse(user=_user(request.name))

    async def ListUsers(
        self, request: user_pb2.ListUsersRequest, context: Any
    ) -> AsyncIterator[user_pb2.ListUsersResponse]:
        """Streams ``page_size`` users, then performs ``page_token``.

        A ``page_token`` of ``start:<command>`` performs it before the first item.
        """
        self._observe()
        command = request.page_token
        if command.startswith("start:"):
            await act(command.removeprefix("start:"), context)
        for n in range(request.page_size):
            self._observe()
            yield user_pb2.ListUsersResponse(user=_user(str(n)), next_page_token=str(n))
        await act(command, context)

    async def BatchCreateUsers(self, request_iterator: Any, context: Any) -> Any:
        """Reads every message, performing its ``user.name`` as a command."""
        self._observe()
        users = []
        async for item in request_iterator:
            await act(item.user.name, context)
            users.append(_user(item.user.name))
        return user_pb2.BatchCreateUsersResponse(users=users)

    async def Chat(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[user_pb2.ChatResponse]:
        """Echoes every message after performing its text as a command."""
        self._observe()
        async for item in request_iterator:
            await act(item.message.text, context)
            yield user_pb2.ChatResponse(message=item.message, replica="test")


class FloodServicer(TestServicer):
    """ListUsers produces items without ever awaiting: the server blocks on
    flow control in ``write`` and a cancel abandons the generators there."""

    async def ListUsers(
        self, request: user_pb2.ListUsersRequest, context: Any
    ) -> AsyncIterator[user_pb2.ListUsersResponse]:
        self._observe()
        padding = "x" * 4096
        for n in range(request.page_size):
            yield user_pb2.ListUsersResponse(user=_user(str(n)), next_page_token=padding)
