"""NodeVncService: a run's VNC display, relayed between a controller and the run's launcher
(LauncherVncService.AttachVnc on its checked unix socket, launcher/vnc.py). The handler never
dials QEMU's VNC socket itself: it lies in the VM user's directory.

Served beside NodeAgentService on the same server, so the same rules hold: mutual TLS with
the node's certificate, and only controllers and admins may call (handler/server.py)."""
from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from corral.v1 import vnc_pb2, vnc_pb2_grpc

log = logging.getLogger(__name__)


class NodeVncServicer(vnc_pb2_grpc.NodeVncServiceServicer):
    """Finds the run as ``runs`` (handler/server.py's NodeAgentServicer) does (NOT_FOUND,
    FAILED_PRECONDITION) and relays."""

    def __init__(self, runs) -> None:
        self.runs = runs

    def AttachInstanceVnc(self, request_iterator: Iterator[vnc_pb2.AttachInstanceVncRequest],
                          context: grpc.ServicerContext) -> Iterator[vnc_pb2.AttachInstanceVncResponse]:
        first = next(request_iterator, None)
        if first is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must name the run")
        launcher = self.runs._launcher(first.name, first.instance_uid, context)

        def viewer_bytes() -> Iterator[vnc_pb2.AttachVncRequest]:
            if first.data:
                yield vnc_pb2.AttachVncRequest(data=first.data)
            try:
                for request in request_iterator:
                    yield vnc_pb2.AttachVncRequest(data=request.data)
            except grpc.RpcError:
                return  # the controller's call ended (cancelled): the relay below ends too

        try:
            call = launcher.vnc_stub.AttachVnc(viewer_bytes())
        except ValueError:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"run {first.instance_uid} has finished")
        context.add_callback(call.cancel)
        log.info("vm %s: vnc attached", first.name)
        try:
            for response in call:
                yield vnc_pb2.AttachInstanceVncResponse(data=response.data)
        except grpc.RpcError as exc:
            if context.is_active() and exc.code() != grpc.StatusCode.CANCELLED:
                context.abort(exc.code(), f"vm {first.name!r}: vnc: {exc.details()}")
        finally:
            call.cancel()
            log.info("vm %s: vnc detached", first.name)
