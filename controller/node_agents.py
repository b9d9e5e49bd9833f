"""Clients of the handlers' NodeAgentService (handler/server.py): one cached channel per
address, TLS when the controller has its mutual-TLS settings.

    agents = NodeAgents(store, credentials)       # controller/main.py makes one per process
    stub = agents.stub("node-1")                  # by node name: its record's status.address
    stub, vm_name, uid = agents.live_run(vm)      # the node of a VM's live run
    try:
        status = stub.PauseInstance(node_agent_pb2.PauseInstanceRequest(
            name=vm_name, instance_uid=uid), timeout=NODE_AGENT_TIMEOUT_SECONDS).status
    except grpc.RpcError as exc:
        raise upstream_error(exc, vm.status.node_name) from None    # a RequestError, same code

Errors are controller.errors.RequestError, so servicer methods wrapped in grpc_errors answer
with them directly."""
from __future__ import annotations

import threading

import grpc

from controller.errors import RequestError
from corral.identity import node_server_name
from corral.resources import NODES
from corral.store import NotFound, Store
from corral.v1 import node_agent_pb2_grpc, vm_pb2

#: Deadline for a unary call to a handler (it asks its launcher, which asks libvirt).
NODE_AGENT_TIMEOUT_SECONDS = 30.0
#: Notice a handler that vanished during a long console stream.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
]
#: Channels kept; the oldest is closed beyond this (handlers that moved to other addresses).
MAX_CHANNELS = 256
LIVE_PHASES = (vm_pb2.VIRTUAL_MACHINE_PHASE_SCHEDULED, vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING)


class NodeAgents:
    """Stubs of the handlers' NodeAgentService by node name, channels cached by address.

    ``credentials``: TLS for dialing handlers (None: plaintext). controller/main.py passes the
    controller's own certificate and key, trusting tls_client_ca_file (the CA of the nodes'
    certificates); handlers refuse node certificates, so the controller's must not be one."""

    def __init__(self, store: Store, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.store = store
        self.credentials = credentials
        self._lock = threading.Lock()
        self._channels: dict[tuple[str, str], grpc.Channel] = {}

    def channel(self, address: str, node_name: str) -> grpc.Channel:
        """With TLS, the handler at ``address`` must prove it is node ``node_name``'s: its
        certificate must name NAME.node.corral (not only the address), so a node that points
        its record at another node's handler, or answers for another, is refused."""
        with self._lock:
            channel = self._channels.get((address, node_name))
            if channel is None:
                if len(self._channels) >= MAX_CHANNELS:
                    self._channels.pop(next(iter(self._channels))).close()
                channel = (grpc.secure_channel(address, self.credentials, options=CHANNEL_OPTIONS + [
                               ("grpc.ssl_target_name_override", node_server_name(node_name))])
                           if self.credentials is not None
                           else grpc.insecure_channel(address, options=CHANNEL_OPTIONS))
                self._channels[(address, node_name)] = channel
            return channel

    def address(self, node_name: str) -> str:
        """Where node ``node_name``'s handler serves (its record's status.address)."""
        try:
            node = self.store.get(NODES, node_name)
        except NotFound:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"node {node_name!r} is not registered") from None
        if not node.status.address:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"node {node_name!r} records no address for its handler (a handler too "
                               "old to serve NodeAgentService?)")
        return node.status.address

    def stub(self, node_name: str) -> node_agent_pb2_grpc.NodeAgentServiceStub:
        """A NodeAgentService stub for node ``node_name`` (the address is read from the store on
        each call). RequestError(FAILED_PRECONDITION) when the node has no address."""
        return node_agent_pb2_grpc.NodeAgentServiceStub(self.channel(self.address(node_name), node_name))

    def live_run(self, vm: vm_pb2.VirtualMachine) -> tuple[node_agent_pb2_grpc.NodeAgentServiceStub, str, str]:
        """(stub of its node, VM name, instance uid) of the VM's current run on a node;
        RequestError(FAILED_PRECONDITION) when it has none (Pending, Succeeded, Failed, ...)."""
        name = vm.metadata.name
        if vm.status.phase not in LIVE_PHASES or not vm.status.node_name or not vm.status.instance_uid:
            phase = vm_pb2.VirtualMachinePhase.Name(vm.status.phase).removeprefix("VIRTUAL_MACHINE_PHASE_").title()
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"VirtualMachine {name!r} is {phase}: it has no run on a node (it must be "
                               "Scheduled or Running)")
        return self.stub(vm.status.node_name), name, vm.status.instance_uid

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


def upstream_error(exc: grpc.RpcError, node_name: str) -> RequestError:
    """A handler's error as a RequestError: the same code, except NOT_FOUND (the node does not
    host the run, yet or any more) which becomes FAILED_PRECONDITION, and PERMISSION_DENIED (the
    node refused the controller's own certificate) which becomes INTERNAL."""
    code = exc.code() if isinstance(exc.code(), grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    details = exc.details() or code.name
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        details = f"node {node_name!r} does not answer: {details}"
    elif code == grpc.StatusCode.NOT_FOUND:  # the VM exists; its run is not on the node (yet, or any more)
        code = grpc.StatusCode.FAILED_PRECONDITION
    elif code == grpc.StatusCode.PERMISSION_DENIED:  # the node refused this controller's certificate
        code = grpc.StatusCode.INTERNAL
        details = f"node {node_name!r} refused this controller: {details}"
    return RequestError(code, details)
