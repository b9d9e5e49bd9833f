"""Turns store and validation errors into gRPC status codes with a message a person can act
on, for unary and streaming handlers alike."""
from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import Callable

import grpc

from corral import store
from corral.selectors import SelectorError
from corral.validation import ValidationError

log = logging.getLogger(__name__)


class RequestError(Exception):
    """Raised by API code to answer with a specific status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def call_ended(context) -> threading.Event:
    """An event set when the call ends (the client left, or it finished): grpc.aio's contexts
    have no is_active(), and a stream waiting on something else must still notice."""
    ended = threading.Event()
    if hasattr(context, "add_done_callback"):  # a coroutine's context
        context.add_done_callback(lambda _context: ended.set())
    else:
        context.add_callback(ended.set)
    return ended


def status_for(exc: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, RequestError):
        return exc.code, str(exc)
    if isinstance(exc, (ValidationError, SelectorError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, store.NotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, store.AlreadyExists):
        return grpc.StatusCode.ALREADY_EXISTS, str(exc)
    if isinstance(exc, store.Conflict):
        return grpc.StatusCode.ABORTED, str(exc)
    if isinstance(exc, store.Compacted):
        return grpc.StatusCode.OUT_OF_RANGE, f"{exc}: list again and watch from the list's resource_version"
    if isinstance(exc, store.Unavailable):
        return grpc.StatusCode.UNAVAILABLE, f"the store (etcd) is unavailable, retry later: {exc}"
    log.exception("unexpected error")
    return grpc.StatusCode.INTERNAL, f"internal error: {exc!r}"


#: gRPC carries a status message percent-encoded in a trailer and refuses trailers past
#: 16 KiB (8 KiB soft): a longer message would turn the answer into RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = 2048


def clip(message: str) -> str:
    data = message.encode()
    if len(data) <= MAX_MESSAGE_BYTES:
        return message
    return data[:MAX_MESSAGE_BYTES].decode(errors="ignore") + "... (message cut)"


#: The status the current call was aborted with, for the metrics interceptor (grpc.aio's
#: contexts do not tell it). A thread's own in the thread pool, a task's own in asyncio.
_aborted_with: contextvars.ContextVar[grpc.StatusCode | None] = contextvars.ContextVar("aborted_with", default=None)


def last_code(default: grpc.StatusCode) -> grpc.StatusCode:
    """The code the call that just failed was aborted with by grpc_errors (else ``default``)."""
    code = _aborted_with.get()
    _aborted_with.set(None)
    return code or default


def _status(exc: Exception) -> tuple[grpc.StatusCode, str]:
    code, message = status_for(exc)
    _aborted_with.set(code)
    return code, clip(message)


def grpc_errors(method: Callable) -> Callable:
    """Decorate a servicer method (plain, generator, coroutine or async generator) so any
    known error aborts the call with its status."""
    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def async_stream_wrapper(self, request, context):
            try:
                async for response in method(self, request, context):
                    yield response
            except Exception as exc:  # noqa: BLE001 - every error becomes a status
                await context.abort(*_status(exc))
        return async_stream_wrapper
    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def async_unary_wrapper(self, request, context):
            try:
                return await method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - every error becomes a status
                await context.abort(*_status(exc))
        return async_unary_wrapper
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def stream_wrapper(self, request, context):
            try:
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - every error becomes a status
                context.abort(*_status(exc))
        return stream_wrapper

    @functools.wraps(method)
    def unary_wrapper(self, request, context):
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            context.abort(*_status(exc))
    return unary_wrapper
