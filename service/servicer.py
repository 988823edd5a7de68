"""The UserService servicer: translates messages and delegates to domain rules and the store.

Errors are raised as :mod:`service.errors` exceptions; the error-mapping
interceptor turns them into statuses, also in the middle of a stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime

import grpc

from meshdemo.v1 import user_pb2, user_pb2_grpc
from service._convert import new_user_from_proto, user_to_proto
from service.domain import (
    MAX_BATCH,
    MAX_CHAT_TEXT,
    MAX_ID,
    NewUser,
    decode_page_token,
    encode_page_token,
    resolve_page_size,
    utc_now,
    validate_new_user,
    validate_new_users,
    validate_user_id,
)
from service.errors import FieldViolation, InvalidArgument, NotFound
from service.store import Store

__all__ = ["UserServicer"]


class UserServicer(user_pb2_grpc.UserServiceServicer):
    """Serves meshdemo.v1.UserService from a :class:`~service.store.Store`."""

    def __init__(
        self, store: Store, *, replica: str, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._store = store
        self._replica = replica
        self._clock = clock

    async def GetUser(
        self, request: user_pb2.GetUserRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> user_pb2.GetUserResponse:
        user = await self._store.get_user(validate_user_id(request.id))
        if user is None:
            raise NotFound("user", request.id)
        return user_pb2.GetUserResponse(user=user_to_proto(user))

    async def CreateUser(
        self,
        request: user_pb2.CreateUserRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> user_pb2.CreateUserResponse:
        new = validate_new_user(new_user_from_proto(request))
        user = await self._store.create_user(new)
        return user_pb2.CreateUserResponse(user=user_to_proto(user))

    async def ListUsers(
        self, request: user_pb2.ListUsersRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[user_pb2.ListUsersResponse]:
        # Both checks run before the first row is read, so bad input fails
        # the stream at once rather than after a partial page.
        limit = resolve_page_size(request.page_size)
        after = decode_page_token(request.page_token)
        async for user in self._store.iter_users(after, limit):
            yield user_pb2.ListUsersResponse(
                user=user_to_proto(user), next_page_token=encode_page_token(user.id)
            )

    async def BatchCreateUsers(
        self,
        request_iterator: AsyncIterator[user_pb2.BatchCreateUsersRequest],
        context: grpc.aio.ServicerContext[object, object],
    ) -> user_pb2.BatchCreateUsersResponse:
        news: list[NewUser] = []
        async for item in request_iterator:
            if len(news) == MAX_BATCH:
                # Stop reading: the batch is refused whole, nothing is stored.
                raise InvalidArgument(
                    f"a batch holds at most {MAX_BATCH} users",
                    [FieldViolation("users", f"more than {MAX_BATCH} items")],
                )
            news.append(new_user_from_proto(item.user))
        users = await self._store.create_users(validate_new_users(news))
        return user_pb2.BatchCreateUsersResponse(users=[user_to_proto(u) for u in users])

    async def Chat(
        self,
        request_iterator: AsyncIterator[user_pb2.ChatRequest],
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[user_pb2.ChatResponse]:
        # The loop ends when the client half-closes; the response stream then
        # closes with OK. Cancellation arrives as CancelledError at the await.
        index = 0
        async for request in request_iterator:
            _check_chat(request.message, index)
            reply = user_pb2.ChatMessage(user_id=request.message.user_id, text=request.message.text)
            reply.timestamp.FromDatetime(self._clock())
            yield user_pb2.ChatResponse(message=reply, replica=self._replica)
            index += 1


def _check_chat(message: user_pb2.ChatMessage, index: int) -> None:
    text = message.text
    if not 1 <= len(text) <= MAX_CHAT_TEXT:
        raise InvalidArgument(
            f"chat text must be 1 to {MAX_CHAT_TEXT} characters",
            [FieldViolation(f"messages[{index}].text", f"length {len(text)}")],
        )
    if len(message.user_id) > MAX_ID:
        raise InvalidArgument(
            f"chat user_id must be at most {MAX_ID} characters",
            [FieldViolation(f"messages[{index}].user_id", f"length {len(message.user_id)}")],
        )
