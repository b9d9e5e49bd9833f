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


def grpc_errors(method: Callable) -> Callable:
    """Decorate a servicer method so any known error aborts the call with its status."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def stream_wrapper(self, request, context):
            try:
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - every error becomes a status
                code, message = status_for(exc)
                context.abort(code, message)
        return stream_wrapper

    @functools.wraps(method)
    def unary_wrapper(self, request, context):
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            code, message = status_for(exc)
            context.abort(code, message)
    return unary_wrapper
