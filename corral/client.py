"""A small client for Corral's gRPC API, with fail-over between controller replicas.

    from corral.client import Client, servers_from_env
    with Client(servers_from_env()) as c:
        vm = c.create_vm(vm)
        c.wait_for_phase(vm.metadata.name, [vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING], timeout=120)

Every call goes to the replica that answered last; on UNAVAILABLE it tries the next one, and
raises the last grpc.RpcError once each replica has refused. Other errors are raised as they
are (grpc.RpcError: ``err.code()``, ``err.details()``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from corral import tls
from corral.client_resources import ResourceCalls
from corral.v1 import (meta_pb2, migration_pb2, migration_pb2_grpc, node_pb2, node_pb2_grpc, vm_pb2, vm_pb2_grpc,
                       vnc_pb2, vnc_pb2_grpc)

DEFAULT_SERVER = "127.0.0.1:7100"
ENV_SERVER = "CORRAL_SERVER"
ENV_TLS_CA_FILE = "CORRAL_TLS_CA_FILE"
ENV_TLS_CERT_FILE = "CORRAL_TLS_CERT_FILE"
ENV_TLS_KEY_FILE = "CORRAL_TLS_KEY_FILE"

TERMINAL_PHASES = frozenset({vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED,
                             vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED})

# A watch is re-opened (after a fresh Get) at least this often while waiting, so a missed
# event can delay a wait by at most this long.
_WATCH_SLICE_SECONDS = 15.0

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """A wait ran out of time; ``vm`` is the last state seen (None if never seen)."""

    def __init__(self, message: str, vm: vm_pb2.VirtualMachine | None = None) -> None:
        super().__init__(message)
        self.vm = vm


class UnexpectedPhase(RuntimeError):
    """The VM reached a terminal phase that is not one waited for; ``vm`` is its state."""

    def __init__(self, message: str, vm: vm_pb2.VirtualMachine) -> None:
        super().__init__(message)
        self.vm = vm


class VirtualMachineGone(LookupError):
    """The VM waited for was deleted (or replaced by another of the same name)."""


def parse_servers(value: str | Iterable[str]) -> list[str]:
    """"a:1, b:2" or ["a:1", "b:2"] -> ["a:1", "b:2"] (blanks dropped)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    servers = [s.strip() for s in items if s and s.strip()]
    if not servers:
        raise ValueError("no server address given")
    return servers


def servers_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """Controller addresses from CORRAL_SERVER (comma-separated), default 127.0.0.1:7100."""
    env = os.environ if environ is None else environ
    return parse_servers(env.get(ENV_SERVER) or DEFAULT_SERVER)


def tls_credentials(ca_file: str | None = None, cert_file: str | None = None,
                    key_file: str | None = None) -> grpc.ChannelCredentials | None:
    """TLS credentials for the API (trust ca_file, present cert_file/key_file); None when none
    is given (plaintext). Raises corral.tls.TLSConfigError naming a bad file."""
    if not (ca_file or cert_file or key_file):
        return None
    return tls.channel_credentials(ca_file, cert_file, key_file)


def tls_credentials_from_env(environ: dict[str, str] | None = None) -> grpc.ChannelCredentials | None:
    """tls_credentials from CORRAL_TLS_CA_FILE, CORRAL_TLS_CERT_FILE, CORRAL_TLS_KEY_FILE."""
    env = os.environ if environ is None else environ
    return tls_credentials(env.get(ENV_TLS_CA_FILE), env.get(ENV_TLS_CERT_FILE), env.get(ENV_TLS_KEY_FILE))


def _phase_label(phase: int) -> str:
    name = vm_pb2.VirtualMachinePhase.Name(phase).removeprefix("VIRTUAL_MACHINE_PHASE_")
    return name.title()


class Client(ResourceCalls):
    """Controller API client over gRPC channels (TLS or plaintext) to one or more HOST:PORT addresses
    (every kind's create/get/list/update/delete: corral.client_resources)."""

    def __init__(self, servers: Sequence[str] | str, *, timeout: float = 10.0,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        """``credentials`` (e.g. ``tls_credentials_from_env()``): TLS channels; None: plaintext."""
        self.servers = parse_servers(servers)
        self.timeout = timeout
        self.credentials = credentials
        self._channels: dict[int, grpc.Channel] = {}
        self._stubs: dict[tuple[int, type], Any] = {}
        self._current = 0

    # --- plumbing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Closes every channel opened so far."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._stubs.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stub(self, index: int, stub_type: type[T]) -> T:
        key = (index, stub_type)
        if key not in self._stubs:
            if index not in self._channels:
                self._channels[index] = (
                    grpc.secure_channel(self.servers[index], self.credentials)
                    if self.credentials is not None else grpc.insecure_channel(self.servers[index]))
            self._stubs[key] = stub_type(self._channels[index])
        return self._stubs[key]

    def _order(self) -> list[int]:
        n = len(self.servers)
        return [(self._current + k) % n for k in range(n)]

    def _unary(self, stub_type: type, method: str, request: Any) -> Any:
        last: grpc.RpcError | None = None
        for index in self._order():
            call = getattr(self._stub(index, stub_type), method)
            try:
                response = call(request, timeout=self.timeout)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                last = err
                continue
            self._current = index
            return response
        assert last is not None
        raise last

    def _paged(self, fetch: Callable[[str], Any], items: Callable[[Any], Iterable[T]]) -> list[T]:
        out: list[T] = []
        token = ""
        while True:
            response = fetch(token)
            out.extend(items(response))
            token = response.next_page_token
            if not token:
                return out

    # --- virtual machines --------------------------------------------------------------------

    def create_vm(self, vm: vm_pb2.VirtualMachine) -> vm_pb2.VirtualMachine:
        """Creates a VM (metadata.name, labels and spec are used); returns it as stored."""
        request = vm_pb2.CreateVirtualMachineRequest(virtual_machine=vm)
        return self._unary(vm_pb2_grpc.VirtualMachineServiceStub, "CreateVirtualMachine",
                           request).virtual_machine

    def create_vms(self, vms: list[vm_pb2.VirtualMachine]) -> list[vm_pb2.VirtualMachine]:
        """Creates up to 100 VMs in one call, all or none; returns them as stored, in order."""
        request = vm_pb2.BatchCreateVirtualMachinesRequest(
            requests=[vm_pb2.CreateVirtualMachineRequest(virtual_machine=vm) for vm in vms])
        return list(self._unary(vm_pb2_grpc.VirtualMachineServiceStub, "BatchCreateVirtualMachines",
                                request).virtual_machines)

    def get_vm(self, name: str) -> vm_pb2.VirtualMachine:
        """One VM by name; NOT_FOUND as a grpc.RpcError."""
        request = vm_pb2.GetVirtualMachineRequest(name=name)
        return self._unary(vm_pb2_grpc.VirtualMachineServiceStub, "GetVirtualMachine",
                           request).virtual_machine

    def list_vms(self, label_selector: str = "", page_size: int = 0) -> list[vm_pb2.VirtualMachine]:
        """Every VM matching the selector, following next_page_token to the last page."""
        return self._paged(
            lambda token: self._unary(
                vm_pb2_grpc.VirtualMachineServiceStub, "ListVirtualMachines",
                vm_pb2.ListVirtualMachinesRequest(page_size=page_size, page_token=token,
                                                  label_selector=label_selector)),
            lambda response: response.virtual_machines)

    def update_vm(self, vm: vm_pb2.VirtualMachine) -> vm_pb2.VirtualMachine:
        """Replaces labels and spec of vm.metadata.name; ABORTED if resource_version is stale."""
        request = vm_pb2.UpdateVirtualMachineRequest(virtual_machine=vm)
        return self._unary(vm_pb2_grpc.VirtualMachineServiceStub, "UpdateVirtualMachine",
                           request).virtual_machine

    def delete_vm(self, name: str, resource_version: int = 0) -> vm_pb2.VirtualMachine | None:
        """Requests deletion; returns the VM with delete_time set, or None if already gone."""
        request = vm_pb2.DeleteVirtualMachineRequest(name=name, resource_version=resource_version)
        response = self._unary(vm_pb2_grpc.VirtualMachineServiceStub, "DeleteVirtualMachine",
                               request)
        return response.virtual_machine if response.HasField("virtual_machine") else None

    def vm_call(self, method: str, request: Any) -> vm_pb2.VirtualMachine:
        """A VirtualMachineService call answering with the VM: vm_call("AddVolume", request)."""
        return self._unary(vm_pb2_grpc.VirtualMachineServiceStub, method, request).virtual_machine

    def act_on_vm(self, verb: str, name: str, **fields: Any) -> vm_pb2.VirtualMachine:
        """A verb: act_on_vm("Stop", "web", force=True) calls StopVirtualMachine; returns the VM."""
        request = getattr(vm_pb2, f"{verb}VirtualMachineRequest")(name=name, **fields)
        return self._unary(vm_pb2_grpc.VirtualMachineServiceStub, f"{verb}VirtualMachine",
                           request).virtual_machine

    def watch_vms(self, resource_version: int = 0, label_selector: str = "", *,
                  timeout: float | None = None) -> Iterator[vm_pb2.WatchVirtualMachinesResponse]:
        """Watch events after ``resource_version`` (0: current VMs as ADDED first, then changes).

        Fails over on UNAVAILABLE before the first event; after that, only a watch that began at
        a non-zero resource_version resumes on another replica, since a snapshot cannot be
        resumed half-way. It resumes after the last revision whose events all arrived: changes
        written in one transaction share a revision, and the stream may have broken between
        them (those of the last revision may then come twice). ``timeout`` bounds the whole
        stream (DEADLINE_EXCEEDED). Closing the iterator cancels the call.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        revision = latest = resource_version
        seen_event = False
        index = self._current
        refusals = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            stub = self._stub(index, vm_pb2_grpc.VirtualMachineServiceStub)
            call = stub.WatchVirtualMachines(
                vm_pb2.WatchVirtualMachinesRequest(resource_version=revision,
                                                   label_selector=label_selector),
                timeout=remaining)
            try:
                for event in call:
                    if not seen_event or refusals:
                        self._current = index
                    seen_event = True
                    refusals = 0
                    if event.resource_version > latest:  # the revision before is complete
                        revision, latest = latest, event.resource_version
                    yield event
                return
            except grpc.RpcError as err:
                resumable = not seen_event or resource_version != 0
                if err.code() != grpc.StatusCode.UNAVAILABLE or not resumable:
                    raise
                refusals += 1
                if refusals >= len(self.servers):
                    raise
                index = (index + 1) % len(self.servers)
            finally:
                call.cancel()

    def wait_for_phase(self, name: str, phases: Iterable[int], timeout: float, *,
                       fail_on_terminal: bool = True,
                       poll_interval: float = 1.0) -> vm_pb2.VirtualMachine:
        """Waits until VM ``name`` is in one of ``phases``; returns it then.

        Raises WaitTimeout, VirtualMachineGone if it is deleted meanwhile, UnexpectedPhase if
        ``fail_on_terminal`` and it reaches Succeeded/Failed without that being waited for, and
        grpc.RpcError (e.g. NOT_FOUND) from the first Get. Uses a watch; polls with Get every
        ``poll_interval`` seconds if the server cannot watch from the VM's revision.
        """
        targets = set(phases)
        deadline = time.monotonic() + timeout
        vm = self.get_vm(name)
        uid = vm.metadata.uid
        use_watch = True

        def check(current: vm_pb2.VirtualMachine) -> bool:
            phase = current.status.phase
            if phase in targets:
                return True
            if fail_on_terminal and phase in TERMINAL_PHASES:
                raise UnexpectedPhase(
                    f"virtualmachine/{name} reached phase {_phase_label(phase)}", current)
            return False

        def timed_out(current: vm_pb2.VirtualMachine) -> WaitTimeout:
            wanted = "|".join(sorted(_phase_label(p) for p in targets))
            return WaitTimeout(
                f"timed out after {timeout:g}s waiting for virtualmachine/{name} to reach "
                f"phase {wanted} (current phase: {_phase_label(current.status.phase)})", current)

        while True:
            if check(vm):
                return vm
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise timed_out(vm)
            if use_watch:
                try:
                    for event in self.watch_vms(vm.metadata.resource_version,
                                                timeout=min(remaining, _WATCH_SLICE_SECONDS)):
                        current = event.virtual_machine
                        if current.metadata.name != name:
                            continue
                        if event.type == meta_pb2.WATCH_EVENT_TYPE_DELETED or (
                                uid and current.metadata.uid and current.metadata.uid != uid):
                            raise VirtualMachineGone(f"virtualmachine/{name} was deleted")
                        vm = current
                        if check(vm):
                            return vm
                except grpc.RpcError as err:
                    if err.code() == grpc.StatusCode.UNAVAILABLE:
                        raise
                    if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                        use_watch = False  # e.g. revision compacted, or no watch: poll
            else:
                time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))
            vm = self._get_same(name, uid)
            if time.monotonic() >= deadline and not check(vm):
                raise timed_out(vm)

    def wait_for_deletion(self, name: str, timeout: float, *, uid: str = "",
                          poll_interval: float = 1.0) -> None:
        """Waits until VM ``name`` (with ``uid``, if given) no longer exists; WaitTimeout else."""
        deadline = time.monotonic() + timeout
        use_watch = True
        while True:
            try:
                vm = self._get_same(name, uid)
            except VirtualMachineGone:
                return
            uid = uid or vm.metadata.uid
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(f"timed out after {timeout:g}s waiting for virtualmachine/"
                                  f"{name} to be deleted", vm)
            if use_watch:
                try:
                    for event in self.watch_vms(vm.metadata.resource_version,
                                                timeout=min(remaining, _WATCH_SLICE_SECONDS)):
                        current = event.virtual_machine
                        if current.metadata.name != name:
                            continue
                        if event.type == meta_pb2.WATCH_EVENT_TYPE_DELETED or (
                                current.metadata.uid and current.metadata.uid != uid):
                            return
                except grpc.RpcError as err:
                    if err.code() == grpc.StatusCode.UNAVAILABLE:
                        raise
                    if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                        use_watch = False
            else:
                time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))

    def _get_same(self, name: str, uid: str) -> vm_pb2.VirtualMachine:
        """Get, with NOT_FOUND or a different uid as VirtualMachineGone."""
        try:
            vm = self.get_vm(name)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise VirtualMachineGone(f"virtualmachine/{name} was deleted") from None
            raise
        if uid and vm.metadata.uid and vm.metadata.uid != uid:
            raise VirtualMachineGone(f"virtualmachine/{name} was deleted")
        return vm

    # --- console -----------------------------------------------------------------------------

    def open_console(self, name: str, keystrokes: Iterable[bytes]) -> Any:
        """VM ``name``'s serial console: ``keystrokes`` (consumed on gRPC's thread; its end
        half-closes the stream) go to the guest; the returned call yields OpenConsoleResponse
        (``.data``: output) until the console ends, and ``.cancel()`` detaches. Errors
        (NOT_FOUND, FAILED_PRECONDITION when the VM has no run on a node, UNAVAILABLE) are
        raised as grpc.RpcError while iterating. No deadline; no fail-over once open."""

        def requests() -> Iterator[vm_pb2.OpenConsoleRequest]:
            yield vm_pb2.OpenConsoleRequest(name=name)
            for data in keystrokes:
                yield vm_pb2.OpenConsoleRequest(data=data)

        stub = self._stub(self._current, vm_pb2_grpc.VirtualMachineServiceStub)
        return stub.OpenConsole(requests())

    # --- VNC (controller/vnc.py) ---------------------------------------------------------------

    def open_vnc(self, name: str, viewer_bytes: Iterable[bytes]) -> Any:
        """VM ``name``'s VNC display, as open_console: ``viewer_bytes`` go to QEMU's VNC server,
        the call yields OpenVncResponse (``.data``: what it sends); ``.cancel()`` leaves."""

        def requests() -> Iterator[vnc_pb2.OpenVncRequest]:
            yield vnc_pb2.OpenVncRequest(name=name)
            for data in viewer_bytes:
                yield vnc_pb2.OpenVncRequest(data=data)

        return self._stub(self._current, vnc_pb2_grpc.VncServiceStub).OpenVnc(requests())

    def create_vnc_token(self, name: str, ttl_seconds: int = 0) -> vnc_pb2.CreateVncTokenResponse:
        """A single-use token (and the web console's link) for VM ``name``'s display."""
        return self._unary(vnc_pb2_grpc.VncServiceStub, "CreateVncToken",
                           vnc_pb2.CreateVncTokenRequest(name=name, ttl_seconds=ttl_seconds))

    # --- migrations --------------------------------------------------------------------------

    def create_migration(self, vm_name: str, target_node: str = "", **policy: Any) -> migration_pb2.Migration:
        """Starts moving a Running VM (to target_node, or where the scheduler picks)."""
        migration = migration_pb2.Migration(spec=migration_pb2.MigrationSpec(
            vm_name=vm_name, target_node=target_node, policy=migration_pb2.MigrationPolicy(**policy)))
        return self._unary(migration_pb2_grpc.MigrationServiceStub, "CreateMigration",
                           migration_pb2.CreateMigrationRequest(migration=migration)).migration

    def get_migration(self, name: str) -> migration_pb2.Migration:
        return self._unary(migration_pb2_grpc.MigrationServiceStub, "GetMigration",
                           migration_pb2.GetMigrationRequest(name=name)).migration

    def list_migrations(self, label_selector: str = "", vm_name: str = "") -> list[migration_pb2.Migration]:
        return self._paged(
            lambda token: self._unary(
                migration_pb2_grpc.MigrationServiceStub, "ListMigrations",
                migration_pb2.ListMigrationsRequest(page_token=token, label_selector=label_selector,
                                                    vm_name=vm_name)),
            lambda response: response.migrations)

    def cancel_migration(self, name: str) -> migration_pb2.Migration:
        return self._unary(migration_pb2_grpc.MigrationServiceStub, "CancelMigration",
                           migration_pb2.CancelMigrationRequest(name=name)).migration

    def cordon_node(self, name: str, *, cordon: bool = True) -> node_pb2.Node:
        verb = "CordonNode" if cordon else "UncordonNode"
        request = getattr(node_pb2, f"{verb}Request")(name=name)
        return self._unary(node_pb2_grpc.NodeServiceStub, verb, request).node

    # --- nodes -------------------------------------------------------------------------------

    def list_nodes(self, label_selector: str = "", page_size: int = 0) -> list[node_pb2.Node]:
        """Every registered node matching the selector, following next_page_token."""
        return self._paged(
            lambda token: self._unary(
                node_pb2_grpc.NodeServiceStub, "ListNodes",
                node_pb2.ListNodesRequest(page_size=page_size, page_token=token,
                                          label_selector=label_selector)),
            lambda response: response.nodes)

    def get_node(self, name: str) -> node_pb2.Node:
        """One node by name; NOT_FOUND as a grpc.RpcError."""
        return self._unary(node_pb2_grpc.NodeServiceStub, "GetNode",
                           node_pb2.GetNodeRequest(name=name)).node
