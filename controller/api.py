"""The public API: VirtualMachineService and NodeService, served by every replica straight
from the store (no cache, so any replica answers the same)."""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import grpc
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from controller import pagination
from controller.errors import RequestError, grpc_errors
from controller.nodes import list_node_views
from corral import status as vm_status
from corral.logs import log_vm
from corral.resources import VMS
from corral.selectors import matches, parse_selector
from corral.store import Compacted, Conflict, NotFound, Store
from corral.v1 import meta_pb2, node_pb2, node_pb2_grpc, vm_pb2, vm_pb2_grpc
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


class VirtualMachineService(vm_pb2_grpc.VirtualMachineServiceServicer):
    def __init__(self, *, store: Store) -> None:
        self.store = store

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
        return vm_pb2.GetVirtualMachineResponse(virtual_machine=self.store.get(VMS, request.name))

    @grpc_errors
    def ListVirtualMachines(self, request, context):
        selector = parse_selector(request.label_selector)
        items, token, revision = list_page(
            self.store, VMS, size=pagination.page_size(request.page_size), token=request.page_token,
            keep=lambda vm: matches(selector, vm.metadata.labels))
        return vm_pb2.ListVirtualMachinesResponse(
            virtual_machines=items, next_page_token=token, resource_version=revision)

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
        if given.spec != current.spec and current.status.phase != vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"VirtualMachine {given.metadata.name!r} is "
                               f"{vm_status.phase_name(current.status.phase)}: its spec can change only "
                               "while it is Pending (labels can always change)")
        current.metadata.labels.clear()
        current.metadata.labels.update(given.metadata.labels)
        current.spec.CopyFrom(given.spec)
        stored = self.store.update(VMS, current)
        return vm_pb2.UpdateVirtualMachineResponse(virtual_machine=stored)

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
        selector = parse_selector(request.label_selector)
        if request.resource_version < 0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "resource_version must not be negative")
        start = request.resource_version
        if start == 0:
            vms, start = self.store.list_all(VMS)
            for vm in vms:
                if matches(selector, vm.metadata.labels):
                    yield vm_pb2.WatchVirtualMachinesResponse(
                        type=meta_pb2.WATCH_EVENT_TYPE_ADDED, virtual_machine=vm,
                        resource_version=vm.metadata.resource_version)
        with self.store.watch(VMS, start_revision=start + 1) as watch:
            for event in watch.events(timeout=WATCH_POLL_SECONDS):
                if not context.is_active():
                    return
                if event is None or not matches(selector, event.obj.metadata.labels):
                    continue
                if event.kind == "delete":
                    kind = meta_pb2.WATCH_EVENT_TYPE_DELETED
                elif event.created:
                    kind = meta_pb2.WATCH_EVENT_TYPE_ADDED
                else:
                    kind = meta_pb2.WATCH_EVENT_TYPE_MODIFIED
                yield vm_pb2.WatchVirtualMachinesResponse(
                    type=kind, virtual_machine=event.obj, resource_version=event.revision)


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
