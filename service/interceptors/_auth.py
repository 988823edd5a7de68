"""Authentication and authorization of every call, per :func:`service.auth.access_for`.

Exempt methods (health, reflection) are not wrapped at all. For the others
the one ``authorization`` metadata entry (two or more are refused) is
verified before the handler runs, and before the request is decoded; the
principal is published in :data:`service.auth.current_principal` for the
servicer and the outer logging layer. Refusals raise
:class:`~service.errors.Unauthenticated` or
:class:`~service.errors.PermissionDenied`, which the error-mapping layer
sends.
"""

from __future__ import annotations

from service.auth import (
    Access,
    TokenVerifier,
    access_for,
    authorization_header,
    authorize,
    current_principal,
)
from service.interceptors._base import CallHook, Context, HookInterceptor, MethodInfo

__all__ = ["AuthInterceptor"]


class _Guard(CallHook[None]):
    __slots__ = ("_access", "_verifier")

    def __init__(self, verifier: TokenVerifier, access: Access) -> None:
        self._verifier = verifier
        self._access = access

    def begin(self, context: Context) -> None:
        principal = self._verifier.verify(authorization_header(context.invocation_metadata()))
        # Published before the role check so a refusal is logged with its
        # caller. Each RPC runs in its own task and context: no reset needed,
        # and the outer layers still see it when the call ends.
        current_principal.set(principal)
        authorize(principal, self._access)


class AuthInterceptor(HookInterceptor):
    """Refuses calls without the token (and role) their method needs.

    Args:
        verifier: Checks bearer tokens.
    """

    def __init__(self, verifier: TokenVerifier) -> None:
        super().__init__()
        self._verifier = verifier

    def hook_for(self, method: MethodInfo) -> CallHook[None] | None:
        """A guard for every method that is not exempt."""
        access = access_for(method.full_name)
        if access is Access.EXEMPT:
            return None
        return _Guard(self._verifier, access)
