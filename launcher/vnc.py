"""The guest's VNC display, relayed: LauncherVncService.AttachVnc connects to QEMU's VNC
unix socket in the run's directory (``<graphics type='vnc' socket=...>``, domain_xml.py) and
passes raw RFB bytes both ways.

The launcher dials it, not the handler: the directory belongs to the VM's user (per-VM
isolation), which the launcher runs as, so no privileged process ever connects to a socket
that user could have replaced. QEMU takes any number of VNC clients at once (shared)."""
from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator

import grpc

from corral.rundir import VNC_SOCKET_FILE
from corral.v1 import vnc_pb2, vnc_pb2_grpc

log = logging.getLogger(__name__)

#: Bytes per read from QEMU (a full-screen update of a 720x400 text console is ~1 MB raw).
CHUNK = 256 * 1024
#: How often the reader looks whether the caller has gone.
POLL_SECONDS = 0.5


def connect(run_dir: str) -> socket.socket:
    """A connection to QEMU's VNC server; OSError (FileNotFoundError: no display yet)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.path.join(run_dir, VNC_SOCKET_FILE))
    except OSError:
        sock.close()
        raise
    sock.settimeout(POLL_SECONDS)
    return sock


def relay(sock: socket.socket, inputs: Iterable[bytes], is_active: Callable[[], bool]) -> Iterator[bytes]:
    """What QEMU sends, until it closes or ``is_active()`` turns false; ``inputs`` are written
    by a thread meanwhile, and their end half-closes the connection (as a TCP proxy does)."""

    def feed() -> None:
        try:
            for data in inputs:
                if data:
                    sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except Exception as exc:  # noqa: BLE001 - the call was cancelled or QEMU went away
            log.debug("vnc input ended: %r", exc)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    writer = threading.Thread(target=feed, name="vnc-input", daemon=True)
    writer.start()
    try:
        while is_active():
            try:
                data = sock.recv(CHUNK)
            except socket.timeout:
                continue
            except OSError as exc:
                log.info("vnc connection ended: %s", exc)
                return
            if not data:
                return
            yield data
    finally:
        sock.close()


class LauncherVncServicer(vnc_pb2_grpc.LauncherVncServiceServicer):
    """Serves the display of the run in ``run_dir`` to the handler."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def AttachVnc(self, request_iterator: Iterator[vnc_pb2.AttachVncRequest],
                  context: grpc.ServicerContext) -> Iterator[vnc_pb2.AttachVncResponse]:
        try:
            sock = connect(self.run_dir)
        except OSError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"the guest's display is not available (the domain is not running?): {exc.strerror}")
        context.add_callback(lambda: _shutdown(sock))
        log.info("vnc attached")
        try:
            for data in relay(sock, (r.data for r in request_iterator), context.is_active):
                yield vnc_pb2.AttachVncResponse(data=data)
        finally:
            log.info("vnc detached")


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
