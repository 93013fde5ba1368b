"""The one place where grpc errors become `cortex.errors` (the original stays chained)."""

from __future__ import annotations

import grpc

from cortex.errors import (
    Conflict,
    CortexError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RemoteError,
    Unavailable,
)

__all__ = ["from_status", "translate"]

_S = grpc.StatusCode
_BY_CODE: dict[grpc.StatusCode, type[CortexError]] = {
    _S.INVALID_ARGUMENT: InvalidArgument,
    _S.OUT_OF_RANGE: InvalidArgument,
    _S.NOT_FOUND: NotFound,
    _S.UNAUTHENTICATED: PermissionDenied,
    _S.PERMISSION_DENIED: PermissionDenied,
    _S.FAILED_PRECONDITION: Conflict,
    _S.ALREADY_EXISTS: Conflict,
    _S.ABORTED: Conflict,
    _S.UNAVAILABLE: Unavailable,
    _S.DEADLINE_EXCEEDED: Unavailable,
    _S.RESOURCE_EXHAUSTED: Unavailable,
}


def translate(error: grpc.aio.AioRpcError, *, address: str = "") -> CortexError:
    """The CortexError for `error`; raise it ``from error`` so the grpc details stay chained."""
    return from_status(error.code(), error.details(), address=address)


def from_status(code: grpc.StatusCode, details: str | None, *, address: str = "") -> CortexError:
    """The CortexError for a call that ended with `code`.

    The message is the server's own details; transport failures (which grpc describes in
    its own words) also name the hub, so a user knows which address to check.
    """
    cls = _BY_CODE.get(code, RemoteError)
    details = details or code.name.lower().replace("_", " ")
    if cls is Unavailable and address:
        details = f"hub {address}: {details}"
    elif cls is RemoteError:
        details = f"{details} ({code.name})"
    return cls(details)
