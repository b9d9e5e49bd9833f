"""A byte stream relayed between a controller's call and a run's launcher: the serial console
(NodeAgentService.AttachInstanceConsole) and the VNC display (NodeVncService.AttachInstanceVnc)
are the same relay with other message types."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import grpc

log = logging.getLogger(__name__)


def relay(first, request_iterator: Iterator, context: grpc.ServicerContext, *,
          open_call: Callable[[Iterator], grpc.Call], wrap_in: Callable[[bytes], object],
          wrap_out: Callable[[bytes], object], what: str) -> Iterator:
    """Send ``first.data`` and each later request's data to the launcher call ``open_call``
    makes, and yield each of its answers as ``wrap_out(data)``; either side ending ends both."""

    def inputs() -> Iterator:
        if first.data:
            yield wrap_in(first.data)
        try:
            for request in request_iterator:
                yield wrap_in(request.data)
        except grpc.RpcError:
            return  # the controller's call ended (cancelled): the relay below ends too

    try:
        call = open_call(inputs())
    except ValueError:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"run {first.instance_uid} has finished")
    context.add_callback(call.cancel)
    log.info("vm %s: %s attached", first.name, what)
    try:
        for response in call:
            yield wrap_out(response.data)
    except grpc.RpcError as exc:
        if context.is_active() and exc.code() != grpc.StatusCode.CANCELLED:
            context.abort(exc.code(), f"vm {first.name!r}: {what}: {exc.details()}")
    finally:
        call.cancel()
        log.info("vm %s: %s detached", first.name, what)
