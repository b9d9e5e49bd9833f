"""Turns store and validation errors into gRPC status codes with a message a person can act
on, for unary and streaming handlers alike."""
from __future__ import annotations

import functools
import inspect
import logging
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


def grpc_errors(method: Callable) -> Callable:
    """Decorate a servicer method so any known error aborts the call with its status."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def stream_wrapper(self, request, context):
            try:
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - every error becomes a status
                code, message = status_for(exc)
                context.abort(code, clip(message))
        return stream_wrapper

    @functools.wraps(method)
    def unary_wrapper(self, request, context):
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            code, message = status_for(exc)
            context.abort(code, clip(message))
    return unary_wrapper
