"""The public API's VirtualMachineService (NodeService: controller/node_api.py), served by every
replica. Gets and writes go to etcd; lists and watches are served from the replica's watch
cache (a list once the cache has caught up with etcd, so any replica answers the same; a watch
from the cache's recent history, or from etcd's when it asks for an older revision). The calls
a storm is made of (create, get) are coroutines on the server's event loop, with etcd's answer
awaited there (corral/async_store.py); the others are plain functions in the server's thread
pool."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import grpc
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from controller import console, instancetypes, lifecycle, pagination
from controller.hotplug_api import Hotplug
from controller.node_agents import NodeAgents
from controller.errors import RequestError, call_ended, grpc_errors
from controller.limits import StreamLimits, ThreadBoundStreams
from controller.nodes import ready_node_names
from controller.objects import new_metadata
from controller.watch_cache import WatchCache
from corral import history, status as vm_status
from corral.async_store import AsyncStore
from corral.logs import log_vm
from corral.resources import VMS
from corral.selectors import matches, parse_selector
from corral.store import AlreadyExists, Compacted, Conflict, Store, StoreError
from corral.v1 import meta_pb2, node_agent_pb2, vm_pb2, vm_pb2_grpc
from corral.validation import (ValidationError, name_problem, system_annotation, user_annotation_problems,
                               validate_new_vm, validate_vm_update)

log = logging.getLogger(__name__)

WATCH_POLL_SECONDS = 1.0
#: VMs one BatchCreateVirtualMachines may create: etcd refuses a transaction of more than
#: 128 operations by default (--max-txn-ops), and each VM is one put and one comparison.
BATCH_CREATE_LIMIT = 100
#: Bytes a batch's VMs may take together: etcd refuses a request past 1.5 MiB by default
#: (--max-request-bytes); a VM alone may take more (its cloud-init data, annotations).
BATCH_CREATE_BYTES = 1024 * 1024


def check_name(name: str) -> None:
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
    ended = call_ended(context) if context is not None else threading.Event()  # None: the caller stops reading
    if start == 0:
        objects, start = store.list_all(kind)
        for obj in objects:
            if matches(selector, obj.metadata.labels):
                yield meta_pb2.WATCH_EVENT_TYPE_ADDED, obj, obj.metadata.resource_version
    with store.watch(kind, start_revision=start + 1) as watch:
        for event in watch.events(timeout=WATCH_POLL_SECONDS):
            if ended.is_set():
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
    def __init__(self, *, store: Store, cache: WatchCache, node_agents: NodeAgents | None = None,
                 limits: StreamLimits | None = None, interactive: ThreadBoundStreams | None = None,
                 async_store: AsyncStore | None = None) -> None:
        self.store = store
        self.async_store = async_store or AsyncStore(store)
        self.cache = cache
        self.limits = limits or StreamLimits(per_node=4, per_user=64)
        # Consoles hold a unary thread each for as long as they are open: bounded.
        self.interactive = interactive or ThreadBoundStreams(total=16, per_identity=4)
        # Stubs of the handlers' NodeAgentService, by node name (plaintext unless given).
        self.node_agents = node_agents or NodeAgents(store)
        self.hotplug = Hotplug(store=store, cache=cache, node_agents=self.node_agents)

    @grpc_errors
    async def CreateVirtualMachine(self, request, context):
        vm, _ = await self._new_vm(request.virtual_machine)
        stored = await self.async_store.create(VMS, vm)
        log_vm(log, stored, "created vm %s uid %s", stored.metadata.name, stored.metadata.uid)
        return vm_pb2.CreateVirtualMachineResponse(virtual_machine=stored)

    @grpc_errors
    async def BatchCreateVirtualMachines(self, request, context):
        """All or none, in one transaction: a fleet's creates cost one call and one revision."""
        entries = request.requests
        if not 1 <= len(entries) <= BATCH_CREATE_LIMIT:
            raise ValidationError([f"requests: {len(entries)} entries, a batch takes 1 to {BATCH_CREATE_LIMIT} "
                                   "(send larger fleets in several calls)"])
        vms: list[vm_pb2.VirtualMachine] = []
        sources: list[instancetypes.Sources] = []
        first_index: dict[str, int] = {}
        for index, entry in enumerate(entries):
            try:  # instance type revisions are written only once every entry passed (below)
                vm, read = await self._new_vm(entry.virtual_machine, record=False)
            except ValidationError as exc:
                raise ValidationError([f"requests[{index}]: {problem}" for problem in exc.problems]) from None
            except RequestError as exc:  # an instance type it names does not exist, say
                raise RequestError(exc.code, f"requests[{index}]: {exc}") from None
            name = vm.metadata.name
            if name in first_index:
                raise ValidationError([f"requests[{index}]: name {name!r} is also the name of "
                                       f"requests[{first_index[name]}]: names must differ"])
            first_index[name] = index
            vms.append(vm)
            sources += [read] if read is not None else []
        size = sum(vm.ByteSize() for vm in vms)
        if size > BATCH_CREATE_BYTES:
            raise ValidationError([f"requests: the VMs take {size} bytes together, a batch at most "
                                   f"{BATCH_CREATE_BYTES} (the store's request limit): send them in smaller batches"])
        revisions = {revision.metadata.name: revision for read in sources for revision in read.new}
        if revisions:  # each once, however many entries name the same type (one thread hop)
            await asyncio.to_thread(instancetypes.record, self.store,
                                    instancetypes.Sources(new=list(revisions.values())))
        try:
            stored = await self.async_store.create_all(VMS, vms)
        except AlreadyExists as exc:
            raise AlreadyExists(f"requests[{first_index[exc.name]}]: {exc}: nothing was created") from None
        for vm in stored:
            log_vm(log, vm, "created vm %s uid %s", vm.metadata.name, vm.metadata.uid)
        return vm_pb2.BatchCreateVirtualMachinesResponse(virtual_machines=stored)

    async def _new_vm(self, given: vm_pb2.VirtualMachine, *,
                      record: bool = True) -> tuple[vm_pb2.VirtualMachine, instancetypes.Sources | None]:
        """The VM to store for a create: validated, with the server's metadata, its instance
        type and preference applied (their revisions written unless not ``record``: then
        ``instancetypes.record`` what is returned), Pending. Raises ValidationError (nothing
        written)."""
        validate_new_vm(given)
        problems = user_annotation_problems(given.metadata.annotations, "metadata.annotations")
        if problems:
            raise ValidationError(problems)
        vm = vm_pb2.VirtualMachine()
        new_metadata(vm.metadata, given.metadata)
        vm.spec.CopyFrom(given.spec)
        read = None
        if instancetypes.names_any(vm.spec):  # refused: nothing written
            read = await asyncio.to_thread(instancetypes.resolve, self.store, vm, dry_run=not record)  # reads etcd
        vm_status.set_phase(vm, vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING)
        return vm, read

    @grpc_errors
    async def GetVirtualMachine(self, request, context):
        check_name(request.name)
        beside = self.store.raw_key(history.folder(request.name))
        vm, kvs = await self.async_store.get_with(VMS, request.name, beside)
        history.merge(vm, [(kv.key[len(beside):].decode(), kv.value) for kv in kvs])
        return vm_pb2.GetVirtualMachineResponse(virtual_machine=present(vm, self._ready(one=True)))

    def _ready(self, *, one: bool = False) -> set[str] | None:
        """The Ready nodes' names: the cache's own set when ``one`` look-up follows (a single
        ``in`` needs no copy of a thousand names), else a copy that stays as it is."""
        if self.cache.synced.is_set():
            return self.cache.ready if one else set(self.cache.ready)
        return _ready_nodes(self.store)

    @grpc_errors
    def ListVirtualMachines(self, request, context):
        selector = parse_selector(request.label_selector)
        size = pagination.page_size(request.page_size)
        keep = lambda vm: matches(selector, vm.metadata.labels)  # noqa: E731
        revision, after = pagination.decode_token(request.page_token)
        page = self.cache.list_vms(revision, after, size, keep) if revision or self.cache.fresh() else None
        if page is not None:
            shared, last, revision = page
            items = [_copied(vm) for vm in shared]
            token = pagination.encode_token(revision, last) if last else ""
        else:  # a later page after the cache moved on, or a cache that is behind: etcd at that revision
            items, token, revision = list_page(self.store, VMS, size=size, token=request.page_token, keep=keep)
        ready = self._ready()
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
        sized = instancetypes.resolve_update(self.store, current, given)
        if _without_run_strategy(given.spec) != _without_run_strategy(current.spec) and lifecycle.is_live(current):
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"VirtualMachine {given.metadata.name!r} is "
                               f"{vm_status.printable_status(current)}: its spec can change only while it "
                               "has no run (stop it first; labels and the run strategy can always change)")
        current.metadata.labels.clear()
        current.metadata.labels.update(given.metadata.labels)
        # The controllers' own annotations (a pool's) stay as stored, whatever the update says.
        kept = {k: v for k, v in current.metadata.annotations.items() if system_annotation(k)}
        current.metadata.annotations.clear()
        current.metadata.annotations.update({k: v for k, v in given.metadata.annotations.items()
                                             if not system_annotation(k)})
        current.metadata.annotations.update(kept)
        current.spec.CopyFrom(given.spec)
        instancetypes.record(self.store, sized)
        stored = self.store.update(VMS, current)
        return vm_pb2.UpdateVirtualMachineResponse(virtual_machine=present(stored, None))

    @grpc_errors
    def DeleteVirtualMachine(self, request, context):
        check_name(request.name)
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
    async def WatchVirtualMachines(self, request, context):
        """From the watch cache, on the server's event loop (a watch holds no thread)."""
        with self.limits.hold(context, "a watch"):
            async for response in self._watch(request):
                yield response

    async def _watch(self, request):
        selector = parse_selector(request.label_selector)
        after = request.resource_version
        if after < 0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "resource_version must not be negative")
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self.cache.wait_synced, 10.0):
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "this controller has not read the store yet: retry")
        current, recent, revision, sub = self.cache.watch_vms(after, loop)
        if sub is None:  # older than the cache's history: etcd's
            async for kind, vm, revision in _in_thread(lambda: watch_objects(self.store, VMS, request, None)):
                yield vm_pb2.WatchVirtualMachinesResponse(type=kind, virtual_machine=present(vm, None),
                                                          resource_version=revision)
            return
        try:
            for vm in current or ():
                if matches(selector, vm.metadata.labels):
                    yield vm_pb2.WatchVirtualMachinesResponse(
                        type=meta_pb2.WATCH_EVENT_TYPE_ADDED, virtual_machine=present(_copied(vm), None),
                        resource_version=vm.metadata.resource_version)
            after = max(after, revision) if current is not None else after
            for change in recent or ():
                event = _watch_event(change, selector)
                if event is not None:
                    yield event
            async for change in sub.async_changes():
                if change.revision <= after:
                    continue
                event = _watch_event(change, selector)
                if event is not None:
                    yield event
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "this controller re-read the store: watch again "
                               "from your last resource_version")
        finally:
            sub.close()

    # -- verbs ----------------------------------------------------------------------------
    def _change(self, name: str, decide: Callable[[vm_pb2.VirtualMachine], bool]) -> vm_pb2.VirtualMachine:
        """Apply a verb's decision to the stored VM, retrying when a status write got in between."""
        check_name(name)
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
        check_name(name)
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
        with self.interactive.hold(context, "a console"):
            yield from console.open_console(self.store, self.node_agents, request_iterator, context)

    # Hotplug (controller/hotplug_api.py): live first, then the spec.
    @grpc_errors
    def AddVolume(self, request, context):
        return vm_pb2.AddVolumeResponse(virtual_machine=present(self.hotplug.add_volume(request), None))

    @grpc_errors
    def RemoveVolume(self, request, context):
        return vm_pb2.RemoveVolumeResponse(virtual_machine=present(self.hotplug.remove_volume(request), None))

    @grpc_errors
    def ResizeVirtualMachine(self, request, context):
        return vm_pb2.ResizeVirtualMachineResponse(virtual_machine=present(self.hotplug.resize(request), None))


def _copied(vm: vm_pb2.VirtualMachine) -> vm_pb2.VirtualMachine:
    copy = vm_pb2.VirtualMachine()
    copy.CopyFrom(vm)
    return copy


def _watch_event(change, selector) -> vm_pb2.WatchVirtualMachinesResponse | None:
    """A watch cache change as the API's event (None: the selector does not match)."""
    if change.vm is None:
        kind, vm = meta_pb2.WATCH_EVENT_TYPE_DELETED, change.previous
    else:
        kind = meta_pb2.WATCH_EVENT_TYPE_ADDED if change.previous is None else meta_pb2.WATCH_EVENT_TYPE_MODIFIED
        vm = change.vm
    if vm is None or not matches(selector, vm.metadata.labels):
        return None
    return vm_pb2.WatchVirtualMachinesResponse(type=kind, virtual_machine=present(_copied(vm), None),
                                               resource_version=change.revision)


async def _in_thread(make_iterator):
    """Items of a blocking iterator, each taken in the thread pool."""
    loop = asyncio.get_running_loop()
    iterator = await loop.run_in_executor(None, make_iterator)
    end = object()
    while (item := await loop.run_in_executor(None, next, iterator, end)) is not end:
        yield item


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
