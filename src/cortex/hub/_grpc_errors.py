"""CortexError -> gRPC status, in one place, for every handler of the hub."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from cortex import errors

log = logging.getLogger("cortex.hub")

_CODES: tuple[tuple[type[errors.CortexError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
)

R = TypeVar("R")
Ctx = grpc.aio.ServicerContext[Any, Any]


# A subclass that the status code alone cannot carry travels by name in this trailer, so
# the SDK can raise the same class (e.g. QuotaExceeded rather than InvalidArgument).
ERROR_TRAILER = "cortex-error"
_NAMED = (errors.QuotaExceeded,)


def trailers_for(exc: errors.CortexError) -> tuple[tuple[str, str], ...]:
    return tuple((ERROR_TRAILER, cls.__name__) for cls in _NAMED if isinstance(exc, cls))


def status_for(exc: errors.CortexError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def unary(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Ctx) -> R:
        try:
            return await fn(self, request, context)
        except errors.CortexError as exc:
            await context.abort(status_for(exc), str(exc), trailing_metadata=trailers_for(exc))
            raise  # unreachable: abort raises

    return wrapper


def streaming(fn: Callable[..., AsyncIterator[R]]) -> Callable[..., AsyncIterator[R]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Ctx) -> AsyncIterator[R]:
        try:
            async for item in fn(self, request, context):
                yield item
        except errors.CortexError as exc:
            await context.abort(status_for(exc), str(exc), trailing_metadata=trailers_for(exc))
        except ExceptionGroup as group:  # from a handler's TaskGroup: report the first cause
            first = _first_cortex_error(group)
            if first is None:
                raise
            await context.abort(status_for(first), str(first))

    return wrapper


def _first_cortex_error(group: BaseExceptionGroup[BaseException]) -> errors.CortexError | None:
    for exc in group.exceptions:
        if isinstance(exc, errors.CortexError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_cortex_error(exc)
            if found is not None:
                return found
    return None


class StrictDecoding(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Answer frames that do not parse with INVALID_ARGUMENT naming the message type.

    grpcio would report UNKNOWN ("Unexpected DecodeError"). Each handler is rebuilt to
    receive raw bytes and parse them itself, so the failure can be answered properly.
    """

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        method = handler_call_details.method
        if handler.unary_unary or handler.unary_stream:
            return _rebuild_unary(handler, parse, method)
        return _rebuild_stream(handler, parse, method)


async def _decode(parse: Callable[[bytes], Any], raw: bytes, method: str, context: Ctx) -> Any:
    try:
        return parse(raw)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"{method}: the request is not a valid protobuf message ({exc})")


def _rebuild_unary(handler: Any, parse: Callable[[bytes], Any], method: str) -> Any:
    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary_unary(raw: bytes, context: Ctx) -> Any:
            return await inner(await _decode(parse, raw, method, context), context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, response_serializer=handler.response_serializer)
    inner_stream = handler.unary_stream
    if not inspect.isasyncgenfunction(inner_stream):
        # A handler that streams with `await context.write(...)` (grpc's health Watch).
        async def unary_writes(raw: bytes, context: Ctx) -> None:
            await inner_stream(await _decode(parse, raw, method, context), context)

        return grpc.unary_stream_rpc_method_handler(
            unary_writes, response_serializer=handler.response_serializer)

    async def unary_stream(raw: bytes, context: Ctx) -> AsyncIterator[Any]:
        async for item in inner_stream(await _decode(parse, raw, method, context), context):
            yield item

    return grpc.unary_stream_rpc_method_handler(
        unary_stream, response_serializer=handler.response_serializer)


def _rebuild_stream(handler: Any, parse: Callable[[bytes], Any], method: str) -> Any:
    async def decoded(raw_iter: AsyncIterator[bytes], context: Ctx) -> AsyncIterator[Any]:
        async for raw in raw_iter:
            yield await _decode(parse, raw, method, context)

    if handler.stream_unary:
        inner = handler.stream_unary

        async def stream_unary(raw_iter: AsyncIterator[bytes], context: Ctx) -> Any:
            return await inner(decoded(raw_iter, context), context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, response_serializer=handler.response_serializer)
    inner_ss = handler.stream_stream

    async def stream_stream(raw_iter: AsyncIterator[bytes], context: Ctx) -> AsyncIterator[Any]:
        async for item in inner_ss(decoded(raw_iter, context), context):
            yield item

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, response_serializer=handler.response_serializer)
