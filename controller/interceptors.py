"""The controller's server interceptors (grpc.aio): who may call which service, and a count
of every call by method and final status code.

The server is asyncio's (controller/server.py): streams that wait (assignments, watches) are
coroutines and hold no thread; unary calls stay plain functions and run in its thread pool.
A wrapper must keep that nature (a coroutine or async generator for async behaviours, a plain
function or generator for the others), or grpc.aio would run it in the wrong place."""
from __future__ import annotations

import inspect
from collections.abc import Callable

import grpc

from controller import auth
from controller.errors import last_code
from corral.metrics import API_REQUESTS


def _rewrap(handler: grpc.RpcMethodHandler, wrap: Callable[[Callable], Callable]) -> grpc.RpcMethodHandler:
    for field in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behavior = getattr(handler, field)
        if behavior is not None:
            return handler._replace(**{field: wrap(behavior)})
    return handler


def _wrap(behavior: Callable, before: Callable, after: Callable) -> Callable:
    """``behavior`` with before(context) called first (it may abort) and after(code) last."""
    if inspect.isasyncgenfunction(behavior):
        async def async_stream(request, context):
            await before(context, True)
            try:
                async for response in behavior(request, context):
                    yield response
            except (GeneratorExit, StopAsyncIteration):
                after(grpc.StatusCode.CANCELLED)
                raise
            except BaseException:
                after(last_code(grpc.StatusCode.UNKNOWN))
                raise
            after(grpc.StatusCode.OK)
        return async_stream
    if inspect.iscoroutinefunction(behavior):
        async def async_unary(request, context):
            await before(context, True)
            try:
                response = await behavior(request, context)
            except BaseException:
                after(last_code(grpc.StatusCode.UNKNOWN))
                raise
            after(grpc.StatusCode.OK)
            return response
        return async_unary
    if inspect.isgeneratorfunction(behavior):
        def stream(request, context):
            before(context, False)
            try:
                yield from behavior(request, context)
            except GeneratorExit:
                after(grpc.StatusCode.CANCELLED)
                raise
            except BaseException:
                after(last_code(grpc.StatusCode.UNKNOWN))
                raise
            after(grpc.StatusCode.OK)
        return stream

    def unary(request, context):
        before(context, False)
        try:
            response = behavior(request, context)
        except BaseException:
            after(last_code(grpc.StatusCode.UNKNOWN))
            raise
        after(grpc.StatusCode.OK)
        return response
    return unary


class ControllerInterceptor(grpc.aio.ServerInterceptor):
    """Refuses, with PERMISSION_DENIED, calls to services the peer's identity may not use
    (auth.service_refusal; per-node checks are in the HandlerService itself), and counts
    every call by method and the status it ended with (OK, an abort's code, UNKNOWN for an
    uncaught exception, CANCELLED for a stream the client left).

    A method's wrapped handler is made once and kept (by method, for the handler grpc gave):
    wrapping inspects the behaviour and builds closures, a cost every call would pay again."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = _rewrap(handler, lambda behavior: _wrap(behavior, *_checks(method)))
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _checks(method: str) -> tuple[Callable, Callable]:
    """before(context, is_async) and after(code) for one method."""
    name = method.lstrip("/")
    ok = API_REQUESTS.labels(name, grpc.StatusCode.OK.name)

    def before(context, is_async: bool):
        refusal = auth.service_refusal(context.auth_context(), method)
        if refusal:
            API_REQUESTS.labels(name, grpc.StatusCode.PERMISSION_DENIED.name).inc()
            return context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)  # raises (sync) / awaited
        return _done() if is_async else None

    def after(code: grpc.StatusCode) -> None:
        (ok if code is grpc.StatusCode.OK else API_REQUESTS.labels(name, code.name)).inc()

    return before, after


async def _done() -> None:
    return None
