"""The one place where grpc errors become `cortex.errors` (the original stays chained)."""

from __future__ import annotations

from typing import Any

import grpc

from cortex.errors import (
    Conflict,
    CortexError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RemoteError,
    Unavailable,
)

__all__ = ["CONNECT_RETRY_S", "from_status", "never_sent", "translate"]

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


# Subclasses the hub names in its "cortex-error" trailer (the code alone gives the parent).
_BY_NAME: dict[str, type[CortexError]] = {"QuotaExceeded": QuotaExceeded}


def translate(error: grpc.aio.AioRpcError, *, address: str = "") -> CortexError:
    """The CortexError for `error`; raise it ``from error`` so the grpc details stay chained."""
    trailers: Any = error.trailing_metadata() or ()
    for key, value in trailers:
        if key == "cortex-error" and isinstance(value, str) and value in _BY_NAME:
            return _BY_NAME[value](error.details() or value)
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


# Pauses before sending a call again when the connection could not be made at all.
CONNECT_RETRY_S = (0.2, 0.6)
# How gRPC says no connection could be made: pick_first (one address) and round_robin
# (a list of hubs, cortex._dial).
_NEVER_SENT = ("failed to connect to all addresses", "connections to all backends failing")


def never_sent(error: grpc.aio.AioRpcError) -> bool:
    """Whether the call never reached a hub (so sending it again cannot duplicate it)."""
    return (error.code() == grpc.StatusCode.UNAVAILABLE
            and any(m in (error.details() or "") for m in _NEVER_SENT))
