"""The public API: VirtualMachineService and NodeService, served by every replica straight
from the store (no cache, so any replica answers the same)."""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import grpc
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from controller import console, lifecycle, pagination
from controller.node_agents import NodeAgents
from controller.errors import RequestError, grpc_errors
from controller.nodes import list_node_views, ready_node_names
from corral import status as vm_status
from corral.logs import log_vm
from corral.resources import NODES, VMS
from corral.selectors import matches, parse_selector
from corral.store import Compacted, Conflict, NotFound, Store, StoreError
from corral.v1 import meta_pb2, node_agent_pb2, node_pb2, node_pb2_grpc, vm_pb2, vm_pb2_grpc
from corral.validation import name_problem, validate_new_vm, validate_vm_update, ValidationError

log = logging.getLogger(__name__)

WATCH_POLL_SECONDS = 1.0


def _check_name(name: str) -> None:
    problem = name_problem(name, "name")
    if problem:
        raise ValidationError([problem])


def list_page(store: Store, kind, *, size: int, token: str, keep: Callable[[object], bool]):
    """One page of a filtered, snapshot-consistent listing: (items, next token, revision)."""
    revision, after = pagination.decode_token(token)
    items: list = []
    while True:
        try:
            batch, read_at, more = store.list(kind, start_after=after, limit=size, revision=revision)
        except Compacted:
            raise RequestError(grpc.StatusCode.OUT_OF_RANGE, "the page token expired (the store compacted "
                               "that revision): start the listing again without a page_token") from None
        revision = revision or read_at
        for obj in batch:
            after = obj.metadata.name
            if keep(obj):
                items.append(obj)
                if len(items) == size:
                    remaining = obj is not batch[-1] or more
                    return items, pagination.encode_token(revision, after) if remaining else "", revision
        if not more:
            return items, "", revision


def present(vm: vm_pb2.VirtualMachine, ready: set[str] | None) -> vm_pb2.VirtualMachine:
    """The VM as the API shows it: with its printable status (never stored)."""
    node = vm.status.node_name
    vm.status.printable_status = vm_status.printable_status(
        vm, node_ready=None if ready is None or not node else node in ready)
    return vm


def _ready_nodes(store: Store) -> set[str] | None:
    try:
        return ready_node_names(store)
    except StoreError:
        return None


def watch_objects(store: Store, kind, request, context):
    """(event type, object, revision) for a Watch request (resource_version, label_selector):
    the current objects as ADDED first when it asks from 0, then every change after."""
    selector = parse_selector(request.label_selector)
    if request.resource_version < 0:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "resource_version must not be negative")
    start = request.resource_version
    if start == 0:
        objects, start = store.list_all(kind)
        for obj in objects:
            if matches(selector, obj.metadata.labels):
                yield meta_pb2.WATCH_EVENT_TYPE_ADDED, obj, obj.metadata.resource_version
    with store.watch(kind, start_revision=start + 1) as watch:
        for event in watch.events(timeout=WATCH_POLL_SECONDS):
            if not context.is_active():
                return
            if event is None or not matches(selector, event.obj.metadata.labels):
                continue
            if event.kind == "delete":
                yield meta_pb2.WATCH_EVENT_TYPE_DELETED, event.obj, event.revision
            elif event.created:
                yield meta_pb2.WATCH_EVENT_TYPE_ADDED, event.obj, event.revision
            else:
                yield meta_pb2.WATCH_EVENT_TYPE_MODIFIED, event.obj, event.revision


class VirtualMachineService(vm_pb2_grpc.VirtualMachineServiceServicer):
    def __init__(self, *, store: Store, node_agents: NodeAgents | None = None) -> None:
        self.store = store
        # Stubs of the handlers' NodeAgentService, by node name (plaintext unless given).
        self.node_agents = node_agents or NodeAgents(store)

    @grpc_errors
    def CreateVirtualMachine(self, request, context):
        given = request.virtual_machine
        validate_new_vm(given)
        vm = vm_pb2.VirtualMachine()
        vm.metadata.name = given.metadata.name
        vm.metadata.labels.update(given.metadata.labels)
        vm.metadata.uid = str(uuid.uuid4())
        vm.metadata.create_time.CopyFrom(vm_status.now())
        vm.spec.CopyFrom(given.spec)
        vm_status.set_phase(vm, vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING)
        stored = self.store.create(VMS, vm)
        log_vm(log, stored, "created vm %s uid %s", stored.metadata.name, stored.metadata.uid)
        return vm_pb2.CreateVirtualMachineResponse(virtual_machine=stored)

    @grpc_errors
    def GetVirtualMachine(self, request, context):
        _check_name(request.name)
        vm = self.store.get(VMS, request.name)
        return vm_pb2.GetVirtualMachineResponse(virtual_machine=present(vm, _ready_nodes(self.store)))

    @grpc_errors
    def ListVirtualMachines(self, request, context):
        selector = parse_selector(request.label_selector)
        items, token, revision = list_page(
            self.store, VMS, size=pagination.page_size(request.page_size), token=request.page_token,
            keep=lambda vm: matches(selector, vm.metadata.labels))
        ready = _ready_nodes(self.store)
        return vm_pb2.ListVirtualMachinesResponse(
            virtual_machines=[present(vm, ready) for vm in items], next_page_token=token, resource_version=revision)

    @grpc_errors
    def UpdateVirtualMachine(self, request, context):
        given = request.virtual_machine
        validate_vm_update(given)
        current = self.store.get(VMS, given.metadata.name)
        if current.metadata.resource_version != given.metadata.resource_version:
            raise Conflict(f"VirtualMachine {given.metadata.name!r} is at resource_version "
                           f"{current.metadata.resource_version}, not {given.metadata.resource_version}: "
                           "read it again and retry")
        if current.metadata.HasField("delete_time"):
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"VirtualMachine {given.metadata.name!r} is being deleted")
        if _without_run_strategy(given.spec) != _without_run_strategy(current.spec) and lifecycle.is_live(current):
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"VirtualMachine {given.metadata.name!r} is "
                               f"{vm_status.printable_status(current)}: its spec can change only while it "
                               "has no run (stop it first; labels and the run strategy can always change)")
        current.metadata.labels.clear()
        current.metadata.labels.update(given.metadata.labels)
        current.spec.CopyFrom(given.spec)
        stored = self.store.update(VMS, current)
        return vm_pb2.UpdateVirtualMachineResponse(virtual_machine=present(stored, None))

    @grpc_errors
    def DeleteVirtualMachine(self, request, context):
        _check_name(request.name)
        if request.resource_version:
            return self._delete(request)
        # No precondition given: a concurrent status write must not make the delete fail.
        for attempt in Retrying(retry=retry_if_exception_type(Conflict), stop=stop_after_attempt(8), reraise=True):
            with attempt:
                return self._delete(request)

    def _delete(self, request):
        vm = self.store.get(VMS, request.name)
        if request.resource_version and request.resource_version != vm.metadata.resource_version:
            raise Conflict(f"VirtualMachine {request.name!r} is at resource_version "
                           f"{vm.metadata.resource_version}, not {request.resource_version}")
        if not vm.status.node_name:
            # Never reached a node: nothing runs anywhere, remove it now.
            self.store.delete(VMS, request.name, resource_version=vm.metadata.resource_version)
            log_vm(log, vm, "deleted vm %s (never scheduled)", request.name)
            return vm_pb2.DeleteVirtualMachineResponse()
        if not vm.metadata.HasField("delete_time"):
            # Its node stops the guest, then releases the VM (HandlerService.ReleaseVirtualMachine).
            vm.metadata.delete_time.CopyFrom(vm_status.now())
            vm = self.store.update(VMS, vm)
            log_vm(log, vm, "vm %s marked for deletion on node %s", request.name, vm.status.node_name)
        return vm_pb2.DeleteVirtualMachineResponse(virtual_machine=vm)

    @grpc_errors
    def WatchVirtualMachines(self, request, context):
        for kind, vm, revision in watch_objects(self.store, VMS, request, context):
            yield vm_pb2.WatchVirtualMachinesResponse(type=kind, virtual_machine=present(vm, None),
                                                      resource_version=revision)

    # -- verbs ----------------------------------------------------------------------------
    def _change(self, name: str, decide: Callable[[vm_pb2.VirtualMachine], bool]) -> vm_pb2.VirtualMachine:
        """Apply a verb's decision to the stored VM, retrying when a status write got in between."""
        _check_name(name)
        for attempt in Retrying(retry=retry_if_exception_type(Conflict), stop=stop_after_attempt(8), reraise=True):
            with attempt:
                vm = self.store.get(VMS, name)
                try:
                    changed = decide(vm)
                except lifecycle.Refused as exc:
                    raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
                if changed:
                    vm = self.store.update(VMS, vm)
                    log_vm(log, vm, "vm %s: %s", name, vm.status.events[-1].message if vm.status.events else "changed")
        return present(vm, None)

    @grpc_errors
    def StartVirtualMachine(self, request, context):
        vm = self._change(request.name, lambda vm: lifecycle.start(vm, now_seconds=time.time()))
        return vm_pb2.StartVirtualMachineResponse(virtual_machine=vm)

    @grpc_errors
    def StopVirtualMachine(self, request, context):
        grace = _grace(request)
        vm = self._change(request.name, lambda vm: lifecycle.stop(vm, grace_period_seconds=grace, force=request.force))
        return vm_pb2.StopVirtualMachineResponse(virtual_machine=vm)

    @grpc_errors
    def RestartVirtualMachine(self, request, context):
        grace = _grace(request)
        vm = self._change(request.name,
                          lambda vm: lifecycle.restart_run(vm, grace_period_seconds=grace, force=request.force))
        return vm_pb2.RestartVirtualMachineResponse(virtual_machine=vm)

    @grpc_errors
    def SaveVirtualMachine(self, request, context):
        vm = self._change(request.name, lifecycle.save)
        return vm_pb2.SaveVirtualMachineResponse(virtual_machine=vm)

    @grpc_errors
    def RestoreVirtualMachine(self, request, context):
        vm = self._change(request.name, lambda vm: lifecycle.restore(vm, now_seconds=time.time()))
        return vm_pb2.RestoreVirtualMachineResponse(virtual_machine=vm)


    def _guest_action(self, name: str, verb: str, call: str, event: str, message: str) -> vm_pb2.VirtualMachine:
        """Ask the run's node to act on the guest now (no store write but an event)."""
        _check_name(name)
        vm = self.store.get(VMS, name)
        try:
            lifecycle.check_guest_action(vm, verb)
        except lifecycle.Refused as exc:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        stub = self.node_agents.stub(vm.status.node_name)
        request_type = getattr(node_agent_pb2, f"{call}Request")
        try:
            getattr(stub, call)(request_type(name=name, instance_uid=vm.status.instance_uid), timeout=30)
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"cannot {verb} VirtualMachine {name!r}: {exc.details()}") from None
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"cannot reach node {vm.status.node_name!r} to "
                               f"{verb} VirtualMachine {name!r}: {exc.details()}") from None
        return self._change(name, lambda current: _note(current, event, message))

    @grpc_errors
    def PauseVirtualMachine(self, request, context):
        vm = self._guest_action(request.name, "pause", "PauseInstance", "PauseRequested", "pause requested")
        return vm_pb2.PauseVirtualMachineResponse(virtual_machine=vm)

    @grpc_errors
    def UnpauseVirtualMachine(self, request, context):
        vm = self._guest_action(request.name, "unpause", "UnpauseInstance", "UnpauseRequested", "unpause requested")
        return vm_pb2.UnpauseVirtualMachineResponse(virtual_machine=vm)

    @grpc_errors
    def SoftRebootVirtualMachine(self, request, context):
        vm = self._guest_action(request.name, "soft-reboot", "SoftRebootInstance", "SoftRebootRequested",
                                "the guest was asked to reboot (ACPI)")
        return vm_pb2.SoftRebootVirtualMachineResponse(virtual_machine=vm)

    @grpc_errors
    def ResetVirtualMachine(self, request, context):
        vm = self._guest_action(request.name, "reset", "ResetInstance", "Reset", "the guest was reset")
        return vm_pb2.ResetVirtualMachineResponse(virtual_machine=vm)

    @grpc_errors
    def OpenConsole(self, request_iterator, context):
        """The guest's serial console, relayed to its node's handler (controller/console.py)."""
        yield from console.open_console(self.store, self.node_agents, request_iterator, context)


def _note(vm: vm_pb2.VirtualMachine, reason: str, message: str) -> bool:
    vm_status.record_event(vm, reason, message)
    return True


def _grace(request) -> int | None:
    if not request.HasField("grace_period_seconds"):
        return None
    if request.grace_period_seconds < 0:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "grace_period_seconds must be 0 or more (use force to destroy at once)")
    return request.grace_period_seconds


def _without_run_strategy(spec: vm_pb2.VirtualMachineSpec) -> vm_pb2.VirtualMachineSpec:
    copy = vm_pb2.VirtualMachineSpec()
    copy.CopyFrom(spec)
    copy.ClearField("run_strategy")
    return copy


class NodeService(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, *, store: Store) -> None:
        self.store = store

    @grpc_errors
    def GetNode(self, request, context):
        _check_name(request.name)
        nodes = {view.metadata.name: view for view in list_node_views(self.store)}
        if request.name not in nodes:
            raise NotFound(f"Node {request.name!r} not found")
        return node_pb2.GetNodeResponse(node=nodes[request.name])

    @grpc_errors
    def ListNodes(self, request, context):
        selector = parse_selector(request.label_selector)
        size = pagination.page_size(request.page_size)
        _, after = pagination.decode_token(request.page_token)
        nodes = [n for n in list_node_views(self.store)
                 if n.metadata.name > after and matches(selector, n.metadata.labels)]
        page = nodes[:size]
        token = pagination.encode_token(1, page[-1].metadata.name) if len(nodes) > size else ""
        return node_pb2.ListNodesResponse(nodes=page, next_page_token=token)

    def _set_unschedulable(self, name: str, value: bool) -> node_pb2.Node:
        _check_name(name)
        for attempt in Retrying(retry=retry_if_exception_type(Conflict), stop=stop_after_attempt(8), reraise=True):
            with attempt:
                node = self.store.get(NODES, name)
                if node.spec.unschedulable != value:
                    node.spec.unschedulable = value
                    self.store.update(NODES, node)
                    log.info("node %s %s", name, "cordoned" if value else "uncordoned")
        return next(view for view in list_node_views(self.store) if view.metadata.name == name)

    @grpc_errors
    def CordonNode(self, request, context):
        return node_pb2.CordonNodeResponse(node=self._set_unschedulable(request.name, True))

    @grpc_errors
    def UncordonNode(self, request, context):
        return node_pb2.UncordonNodeResponse(node=self._set_unschedulable(request.name, False))
