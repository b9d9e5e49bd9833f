"""NodeVncService: a run's VNC display, relayed between a controller and the run's launcher
(LauncherVncService.AttachVnc on its checked unix socket, launcher/vnc.py). The handler never
dials QEMU's VNC socket itself: it lies in the VM user's directory.

Served beside NodeAgentService on the same server, so the same rules hold: mutual TLS with
the node's certificate, and only controllers and admins may call (handler/server.py)."""
from __future__ import annotations

from collections.abc import Iterator

import grpc

from corral.v1 import vnc_pb2, vnc_pb2_grpc
from handler.relay import relay


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
        yield from relay(first, request_iterator, context,
                         open_call=lambda inputs: launcher.vnc_stub.AttachVnc(inputs),
                         wrap_in=lambda data: vnc_pb2.AttachVncRequest(data=data),
                         wrap_out=lambda data: vnc_pb2.AttachInstanceVncResponse(data=data),
                         what="vnc")
