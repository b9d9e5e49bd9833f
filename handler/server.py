"""The handler's gRPC server: NodeAgentService, what controllers ask of this node's runs that
needs no store write (pause, unpause, soft reboot, reset, the serial console), and beside it
NodeVncService (the VNC display: handler/vnc.py).

Each request names a run (VM name + instance uid) among the node agent's launchers: a run
this node does not host is NOT_FOUND, a finished one FAILED_PRECONDITION; anything else is
forwarded to the run's launcher (LauncherService on its unix socket) and its answer, or its
error code, returned. The console is a bidi stream relayed to the launcher's AttachConsole.

Security: with the node's TLS settings (tls_cert_file, tls_key_file, tls_ca_file) the server
speaks TLS with the node's certificate and requires a client certificate signed by
tls_ca_file; node certificates (CN node:NAME or SAN URI corral://node/NAME) are refused, so
one node's credential cannot act on another node's guests: only controllers and users may
call. Without them it serves plaintext and warns (a trusted network only)."""
from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc

from corral.identity import ADMIN, CONTROLLER, ROLE_URI_PREFIX, identity_of
from corral import tls
from corral.settings import HandlerSettings, loopback
from corral.v1 import launcher_pb2, node_agent_pb2, node_agent_pb2_grpc, vnc_pb2_grpc
from handler import hotplug
from handler.isolation import remove_stale_console_locks
from handler.relay import relay
from handler.vnc import NodeVncServicer
from handler.snapshots import NodeSnapshots, SnapshotRefused

log = logging.getLogger(__name__)

SERVICE_NAME = node_agent_pb2.DESCRIPTOR.services_by_name["NodeAgentService"].full_name
#: A launcher answers a pause or reset in milliseconds; libvirt may take a while when busy.
LAUNCHER_TIMEOUT_SECONDS = 30.0
#: Accept the controllers' keepalive pings on long console streams.
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),  # a second handler on the same port must fail, not share it
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 4000),
    ("grpc.http2.max_ping_strikes", 0),
]


class NodeAgentServicer(node_agent_pb2_grpc.NodeAgentServiceServicer):
    """Finds the run among ``agent.launchers`` (handler/agent.py) and asks its launcher."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self.snapshots = NodeSnapshots(agent)

    def _launcher(self, name: str, instance_uid: str, context: grpc.ServicerContext):
        if not name or not instance_uid:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name and instance_uid are required")
        launcher = self.agent.launchers.get(instance_uid)
        if launcher is None or launcher.vm.metadata.name != name:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"run {instance_uid} of vm {name!r} is not hosted by node {self.agent.node_name}")
        if launcher.finished or launcher.closed.is_set():
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"run {instance_uid} of vm {name!r} has finished on node {self.agent.node_name}")
        return launcher

    def _forward(self, request, context: grpc.ServicerContext, method: str, launcher_request):
        launcher = self._launcher(request.name, request.instance_uid, context)
        try:
            response = getattr(launcher.stub, method)(launcher_request, timeout=LAUNCHER_TIMEOUT_SECONDS)
        except grpc.RpcError as exc:
            context.abort(exc.code(), f"vm {request.name!r}: {exc.details()}")
        except ValueError:  # the launcher's channel was closed: the run just ended
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"run {request.instance_uid} of vm "
                          f"{request.name!r} has finished")
        log.info("vm %s: %s -> %s", request.name, method,
                 launcher_pb2.DomainState.Name(response.status.state))
        return response.status

    def PauseInstance(self, request, context):
        return node_agent_pb2.PauseInstanceResponse(
            status=self._forward(request, context, "PauseDomain", launcher_pb2.PauseDomainRequest()))

    def UnpauseInstance(self, request, context):
        return node_agent_pb2.UnpauseInstanceResponse(
            status=self._forward(request, context, "ResumeDomain", launcher_pb2.ResumeDomainRequest()))

    def SoftRebootInstance(self, request, context):
        return node_agent_pb2.SoftRebootInstanceResponse(
            status=self._forward(request, context, "RebootDomain", launcher_pb2.RebootDomainRequest()))

    def ResetInstance(self, request, context):
        return node_agent_pb2.ResetInstanceResponse(
            status=self._forward(request, context, "ResetDomain", launcher_pb2.ResetDomainRequest()))

    def AttachInstanceConsole(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must name the run")
        launcher = self._launcher(first.name, first.instance_uid, context)
        remove_stale_console_locks()  # else a dead holder's lock on this pty blocks the console
        yield from relay(first, request_iterator, context,
                         open_call=lambda inputs: launcher.stub.AttachConsole(inputs),
                         wrap_in=lambda data: launcher_pb2.AttachConsoleRequest(data=data),
                         wrap_out=lambda data: node_agent_pb2.AttachInstanceConsoleResponse(data=data),
                         what="console")

    # Disk snapshots: handler/snapshots.py (through the run's launcher, or qemu-img on the files).
    def _snapshot(self, method, request, context: grpc.ServicerContext):
        try:
            return method(request)
        except SnapshotRefused as exc:
            log.warning("vm %s: %s", request.name, exc)
            context.abort(exc.code, f"vm {request.name!r}: {exc}")

    def TakeDiskSnapshots(self, request, context):
        return self._snapshot(self.snapshots.take, request, context)

    def RestoreDiskSnapshots(self, request, context):
        return self._snapshot(self.snapshots.restore, request, context)

    def DeleteDiskSnapshots(self, request, context):
        return self._snapshot(self.snapshots.delete, request, context)
    # Hotplug (handler/hotplug.py): a disk is prepared here before its launcher attaches it.
    def AttachInstanceDisk(self, request, context):
        return hotplug.attach_disk(self.agent, self._launcher(request.name, request.instance_uid, context),
                                   request, context)

    def DetachInstanceDisk(self, request, context):
        return hotplug.detach_disk(self.agent, self._launcher(request.name, request.instance_uid, context),
                                   request, context)

    def ResizeInstance(self, request, context):
        return hotplug.resize(self._launcher(request.name, request.instance_uid, context), request, context)


class RefuseNodeIdentities(grpc.ServerInterceptor):
    """PERMISSION_DENIED for a client certificate of a node or of a read-only user (only
    controllers and admins may act on this node's guests: every call here pauses, resets or
    types into one); plaintext connections carry no identity and pass."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None

        def guard(behavior: Callable) -> Callable:
            def guarded(request_or_iterator, context):
                identity = identity_of(context.auth_context())
                if identity is not None and (identity.kind != "user" or identity.role not in (ADMIN, CONTROLLER)):
                    context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                  f"{identity} may not use {SERVICE_NAME}: it is for controllers and admins "
                                  f"(SAN URI {ROLE_URI_PREFIX}{CONTROLLER} or {ROLE_URI_PREFIX}{ADMIN})")
                return behavior(request_or_iterator, context)
            return guarded

        for kind, wrap in (("unary_unary", grpc.unary_unary_rpc_method_handler),
                           ("unary_stream", grpc.unary_stream_rpc_method_handler),
                           ("stream_unary", grpc.stream_unary_rpc_method_handler),
                           ("stream_stream", grpc.stream_stream_rpc_method_handler)):
            behavior = getattr(handler, kind)
            if behavior is not None:
                return wrap(guard(behavior), handler.request_deserializer, handler.response_serializer)
        return handler


def this_host_address() -> str:
    """An address of this machine others can reach: what its hostname resolves to, unless
    that is a loopback address (Debian's 127.0.1.1), then the source address of the default
    route, else the hostname itself."""
    name = socket.getfqdn()
    try:
        resolved = socket.gethostbyname(name)
        if not ipaddress.ip_address(resolved).is_loopback:
            return resolved
    except (OSError, ValueError):
        pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            return probe.getsockname()[0]
    except OSError:
        return name


def advertised_address(listen: str, advertise: str, port: int) -> str:
    """What the node record says controllers should dial (``port``: the one bound)."""
    if advertise:
        return advertise
    host = listen.rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::", "*"):
        host = this_host_address()
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


class AgentServer:
    """The gRPC server; ``bind()`` before the node registers (its address goes in the record),
    ``start(agent)`` once the node agent exists."""

    def __init__(self, settings: HandlerSettings) -> None:
        self.settings = settings
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="agent"),
                                  options=SERVER_OPTIONS, interceptors=[RefuseNodeIdentities()])
        self.address = ""

    def bind(self) -> str:
        """Listen; returns the advertised address. Raises SystemExit when it cannot."""
        settings = self.settings
        secure = bool(settings.tls_cert_file and settings.tls_ca_file)
        try:
            if secure:
                credentials = tls.server_credentials(settings.tls_cert_file, settings.tls_key_file,
                                                     settings.tls_ca_file)
                port = self.server.add_secure_port(settings.listen, credentials)
            else:
                port = self.server.add_insecure_port(settings.listen)
        except tls.TLSConfigError as exc:
            raise SystemExit(f"corral-handler: {exc}") from None
        except RuntimeError as exc:
            raise SystemExit(f"corral-handler: cannot listen on {settings.listen}: {exc}") from None
        if port == 0:
            raise SystemExit(f"corral-handler: cannot listen on {settings.listen}")
        self.address = advertised_address(settings.listen, settings.advertise_address, port)
        if secure:
            log.info("node agent on %s (advertised %s) with mutual TLS (client CA %s)", settings.listen,
                     self.address, settings.tls_ca_file)
        else:
            log.warning("%snode agent on %s (advertised %s) WITHOUT TLS%s", "" if loopback(settings.listen)
                        else "INSECURE (--insecure): ", settings.listen, self.address,
                        "" if loopback(settings.listen) else " to the network: anyone who reaches it can "
                        "pause, reset or type into this node's guests")
        return self.address

    def start(self, agent) -> None:
        servicer = NodeAgentServicer(agent)
        node_agent_pb2_grpc.add_NodeAgentServiceServicer_to_server(servicer, self.server)
        vnc_pb2_grpc.add_NodeVncServiceServicer_to_server(NodeVncServicer(servicer), self.server)
        self.server.start()

    def stop(self, grace: float = 1.0) -> None:
        self.server.stop(grace=grace).wait()
