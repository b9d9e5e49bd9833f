"""HandlerService: what node handlers get from any controller replica. Their assignments as
a stream (snapshot, SYNCED, then changes), and the one place their reports become VM status
writes, each checked against the VM's uid and assigned node."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from pyetcd import transactions as T
from tenacity import retry, retry_if_exception_type, stop_after_attempt

from controller import auth
from controller.errors import RequestError, grpc_errors
from controller.lease_renewer import LeaseRenewer
from controller.limits import StreamLimits
from controller.migrations import clear_target, fail, progress_message, set_phase
from controller.node_control import NodeControlMethods
from controller.subscriptions import Subscription
from controller.watch_cache import WatchCache
from corral import metrics, status as vm_status
from corral.async_store import AsyncStore
from corral.logs import log_vm
from corral.resources import INSTANCE_LOCKS_FOLDER, LEADER_TURNED_AWAY, MIGRATIONS, VMS, instance_lock_value
from corral.store import Conflict, Store, StoreError
from corral.v1 import handler_pb2, handler_pb2_grpc, migration_pb2, vm_pb2
from corral.validation import ValidationError, bounded_guest_info, name_problem

log = logging.getLogger(__name__)

SAVE_FAILED = "SaveFailed"
STORE_HEALTH_TIMEOUT = 1.0
#: A replica that became leader moves this many node streams to the other replicas per interval.
HAND_OFF_STREAMS = 25
HAND_OFF_INTERVAL_SECONDS = 0.5


def _assigned(vm: vm_pb2.VirtualMachine, node: str) -> bool:
    """The node runs the VM, or a live migration brings it there."""
    return vm.status.node_name == node or vm.status.migration_target.node_name == node


def apply_run_report(vm: vm_pb2.VirtualMachine, request: handler_pb2.ReportVirtualMachineStatusRequest, *,
                     new_phase: bool, reason: str) -> bool:
    """What a report says beyond the phase: pause, guest agent, a save, the run's end; events."""
    changed = False
    running = request.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
    if running:
        paused = vm_status.condition(vm, "Paused")
        if request.paused or (paused is not None and paused.status):
            if vm_status.set_condition(vm, "Paused", request.paused, "PausedByUser" if request.paused else "Unpaused"):
                vm_status.record_event(vm, "Paused" if request.paused else "Unpaused",
                                       "the guest is paused" if request.paused else "the guest runs again")
                changed = True
        agent = request.guest.agent_connected
        guest = bounded_guest_info(request.guest)  # the guest wrote it: capped and made printable
        if vm.status.guest != guest:
            vm.status.guest.CopyFrom(guest)
            changed = True
        known = vm_status.condition(vm, "AgentConnected")
        if agent or known is not None:
            if vm_status.set_condition(vm, "AgentConnected", agent, "AgentConnected" if agent else "AgentNotAnswering"):
                changed = True
        if request.reason == SAVE_FAILED and vm_status.run_request_applies(vm) \
                and vm.status.run_request.action == vm_pb2.RUN_ACTION_SAVE:
            vm.status.ClearField("run_request")
            vm_status.record_event(vm, SAVE_FAILED, request.message, warning=True)
            changed = True
    if not new_phase:
        return changed
    if running:
        vm_status.record_event(vm, "Started" if not vm.status.HasField("restore_from") else "Restored",
                               f"run {vm.status.instance_uid} is running on node {vm.status.node_name}")
    elif request.phase in vm_status.TERMINAL_PHASES:
        if request.saved_state_path and reason == "Saved":
            vm.status.saved_state.CopyFrom(vm_pb2.SavedState(
                path=request.saved_state_path, node_name=vm.status.node_name,
                instance_uid=vm.status.instance_uid, save_time=vm_status.now()))
        vm_status.record_run_end(vm, reason, request.message)
        vm_status.record_event(vm, reason, request.message or f"run {vm.status.instance_uid} ended",
                               warning=request.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED)
    return True


def apply_migration_report(vm: vm_pb2.VirtualMachine, migration: migration_pb2.Migration,
                           request_in: handler_pb2.ReportMigrationStatusRequest) -> tuple[bool, bool]:
    """Move a migration on from a node's report: (VM changed, migration changed)."""
    MP = migration_pb2
    request = request_in
    status, target = migration.status, vm.status.migration_target
    if (request.role == handler_pb2.MIGRATION_ROLE_TARGET and request.downtime_ms
            and status.mode == MP.MIGRATION_MODE_POST_COPY):
        # After a switch to post-copy the target's libvirt figure is no downtime (the guest ran
        # there meanwhile; the benchmark once saw 25 s): only the source's, QEMU's at the switch.
        request = handler_pb2.ReportMigrationStatusRequest()
        request.CopyFrom(request_in)
        request.downtime_ms = 0
    if status.phase == MP.MIGRATION_PHASE_SUCCEEDED and request.phase == MP.MIGRATION_PHASE_SUCCEEDED:
        # The other side's report of the same success: keep the figures it adds.
        changed = False
        for field in ("downtime_ms", "data_total_bytes", "data_processed_bytes"):
            if getattr(request, field) and not getattr(status, field):
                setattr(status, field, getattr(request, field))
                changed = True
        if changed:
            status.message = f"moved to node {status.target_node}; downtime {status.downtime_ms} ms"
        return False, changed
    if status.phase in (MP.MIGRATION_PHASE_SUCCEEDED, MP.MIGRATION_PHASE_FAILED):
        return False, False
    source = request.role == handler_pb2.MIGRATION_ROLE_SOURCE
    if request.phase == MP.MIGRATION_PHASE_TARGET_READY and not source:
        if (target.target_address, target.target_domain_xml, target.migration_uri) == (
                request.target_address, request.target_domain_xml, request.migration_uri):
            return False, False
        target.target_address = request.target_address
        target.target_domain_xml = request.target_domain_xml
        target.migration_uri = request.migration_uri
        status.target_address = request.target_address
        set_phase(migration, MP.MIGRATION_PHASE_TARGET_READY)
        return True, True
    if request.phase == MP.MIGRATION_PHASE_SUCCEEDED and not source:
        # The guest runs on the target: switch now, whether or not the source lives to say so
        # (a source lost after the switch-over must not make the VM start anywhere else).
        adjusted, request = request, handler_pb2.ReportMigrationStatusRequest()
        request.CopyFrom(adjusted)
        source = True
    if request.phase == MP.MIGRATION_PHASE_FAILED and not source:
        # The target cannot take the guest: the source aborts (it alone ends the migration).
        if target.cancel_requested:
            return False, False
        target.cancel_requested = True
        status.message = f"target node {request.node_name}: {request.message}"
        target.cancel_reason, target.cancel_message = "TargetFailed", status.message
        vm_status.record_event(vm, "MigrationTargetFailed", status.message, warning=True)
        return True, True
    if not source:
        return False, False
    if request.phase == MP.MIGRATION_PHASE_RUNNING:
        status.mode = request.mode or status.mode
        status.data_total_bytes = request.data_total_bytes
        status.data_processed_bytes = request.data_processed_bytes
        status.data_remaining_bytes = request.data_remaining_bytes
        status.message = progress_message(status)
        set_phase(migration, MP.MIGRATION_PHASE_RUNNING)
        return False, True
    if request.phase == MP.MIGRATION_PHASE_SUCCEEDED:
        status.downtime_ms = request.downtime_ms
        status.mode = request.mode or status.mode
        status.data_total_bytes = request.data_total_bytes or status.data_total_bytes
        status.data_processed_bytes = request.data_processed_bytes or status.data_processed_bytes
        status.data_remaining_bytes = 0
        status.message = f"moved to node {target.node_name}; downtime {request.downtime_ms} ms"
        set_phase(migration, MP.MIGRATION_PHASE_SUCCEEDED)
        source_node = vm.status.node_name
        vm.status.node_name = target.node_name
        vm.status.instance_lock_lease = 0  # the target takes the lock itself (the source frees it)
        clear_target(vm, "Migrated", f"migration {migration.metadata.name}: moved from node {source_node} "
                                     f"to {vm.status.node_name} (downtime {request.downtime_ms} ms)", warning=False)
        return True, True
    if request.phase == MP.MIGRATION_PHASE_FAILED:
        fail(migration, request.reason or "MigrationFailed", request.message or status.message)
        clear_target(vm, "MigrationFailed", f"migration {migration.metadata.name}: {migration.status.message}",
                     warning=True)
        return True, True
    return False, False


class HandlerService(NodeControlMethods, handler_pb2_grpc.HandlerServiceServicer):
    def __init__(self, *, store: Store, cache: WatchCache, limits: StreamLimits | None = None,
                 leading: Callable[[], bool] = lambda: False, async_store: AsyncStore | None = None) -> None:
        self.store = store
        self.async_store = async_store or AsyncStore(store)
        self.cache = cache
        self.limits = limits or StreamLimits(per_node=4, per_user=64)
        self.renewer = LeaseRenewer(store)
        self.leading = leading  # true while this replica leads and sheds node streams
        self._movable: set[Subscription] = set()  # streams of handlers that asked to avoid the leader

    @grpc_errors
    async def WatchAssignments(self, request, context):
        """The node's VMs from the replica's watch cache (snapshot, SYNCED, then its changes):
        one etcd watch per replica however many nodes follow it, and no thread per stream (a
        coroutine on the server's event loop)."""
        node = request.node_name
        auth.require_node(context, node)
        problem = name_problem(node, "node_name")
        if problem:
            raise ValidationError([problem])
        if request.avoid_leader and self.leading():
            # Its reconcilers need the CPU, and a leader that fails then cuts no node's stream
            # (as Kubernetes' scheduler and controllers serve no API). The handler comes back
            # without avoid_leader when no other replica answers.
            context.set_trailing_metadata((LEADER_TURNED_AWAY,))
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "this controller replica leads: node streams go to "
                                                            "the other replicas while one answers")
        loop = asyncio.get_running_loop()
        if not self.cache.synced.is_set() and not await loop.run_in_executor(None, self.cache.wait_synced, 10.0):
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "this controller has not read the store yet: retry")
        with self.limits.hold(context, f"an assignments stream for node {node!r}"):
            async for response in self._assignments(node, loop, context, movable=request.avoid_leader):
                yield response

    async def hand_off_streams(self) -> None:
        """While this replica leads, end the node streams it took as a standby from handlers
        that asked to avoid the leader (they have other replicas to go to): a few at a time, as
        each costs its node a resync. Streams asked without avoid_leader stay."""
        while True:
            await asyncio.sleep(HAND_OFF_INTERVAL_SECONDS)
            if self._movable and self.leading():
                for subscription in list(self._movable)[:HAND_OFF_STREAMS]:
                    self._movable.discard(subscription)
                    subscription.move()

    async def _assignments(self, node: str, loop: asyncio.AbstractEventLoop, context, *, movable: bool):
        vms, revision, subscription = self.cache.subscribe(node, loop)
        if movable:
            self._movable.add(subscription)
        try:  # a handler that goes away cancels this coroutine: the finally frees its subscription
            for vm in vms:
                yield handler_pb2.WatchAssignmentsResponse(
                    type=handler_pb2.ASSIGNMENT_EVENT_TYPE_UPSERT, virtual_machine=vm, resource_version=revision)
            yield handler_pb2.WatchAssignmentsResponse(type=handler_pb2.ASSIGNMENT_EVENT_TYPE_SYNCED,
                                                       resource_version=revision)
            log.info("node %s follows its %d assignments from revision %d", node, len(vms), revision)
            async for change in subscription.async_changes():
                if change.vm is not None:
                    yield handler_pb2.WatchAssignmentsResponse(
                        type=handler_pb2.ASSIGNMENT_EVENT_TYPE_UPSERT, virtual_machine=change.vm,
                        resource_version=change.revision)
                else:
                    gone = vm_pb2.VirtualMachine()
                    gone.metadata.name = change.name
                    yield handler_pb2.WatchAssignmentsResponse(
                        type=handler_pb2.ASSIGNMENT_EVENT_TYPE_REMOVE, virtual_machine=gone,
                        resource_version=change.revision)
            if subscription.moved:
                log.info("node %s: this replica leads: its stream moves to another replica", node)
                context.set_trailing_metadata((LEADER_TURNED_AWAY,))
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "this controller replica now leads: node streams go "
                                                                "to the other replicas while one answers")
            log.info("node %s: the watch cache started over: the stream ends for a resync", node)
        finally:
            self._movable.discard(subscription)
            subscription.close()

    def _owned_vm(self, node: str, name: str, uid: str, instance_uid: str = "",
                  vm: vm_pb2.VirtualMachine | None = None) -> vm_pb2.VirtualMachine:
        vm = vm if vm is not None else self.store.get(VMS, name)
        if vm.metadata.uid != uid or vm.status.node_name != node:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"VirtualMachine {name!r} uid {uid} is not assigned to node {node!r}")
        if instance_uid and vm.status.instance_uid != instance_uid:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"run {instance_uid} of VirtualMachine {name!r} is over "
                               f"(the current run is {vm.status.instance_uid or 'not started'})")
        return vm

    @grpc_errors
    async def ReportVirtualMachineStatus(self, request, context):
        """Applied to the VM as the watch cache has it (no etcd read, no decoding), written from
        the event loop; when that copy was behind (the write conflicts, or it says the run is
        not the node's), to the VM as etcd has it (on a thread: rare)."""
        auth.require_node(context, request.node_name)
        cached = self.cache.vms.get(request.name)
        if cached is not None:
            copy = vm_pb2.VirtualMachine()
            copy.CopyFrom(cached)
            try:
                vm, changed, new_phase = self._apply_report(request, copy)
                if changed:
                    vm = await self.async_store.update(VMS, vm)
                return self._reported(request, vm, changed, new_phase)
            except (Conflict, RequestError):
                pass
        return await asyncio.to_thread(self._report_from_store, request)

    @retry(retry=retry_if_exception_type(Conflict), stop=stop_after_attempt(8), reraise=True)
    def _report_from_store(self, request) -> handler_pb2.ReportVirtualMachineStatusResponse:
        vm, changed, new_phase = self._apply_report(request, self.store.get(VMS, request.name))
        if changed:
            vm = self.store.update(VMS, vm)
        return self._reported(request, vm, changed, new_phase)

    def _reported(self, request, vm: vm_pb2.VirtualMachine, changed: bool,
                  new_phase: bool) -> handler_pb2.ReportVirtualMachineStatusResponse:
        """The answer to a report once its change (if any) is written, counted and logged."""
        if changed:
            if new_phase:
                metrics.observe_phase_transition(vm)
            log_vm(log, vm, "vm %s on %s is %s %s", vm.metadata.name, request.node_name,
                   vm_status.phase_name(vm.status.phase), request.reason)
        return handler_pb2.ReportVirtualMachineStatusResponse(virtual_machine=vm)

    def _apply_report(self, request, vm: vm_pb2.VirtualMachine) -> tuple[vm_pb2.VirtualMachine, bool, bool]:
        """The report applied to the VM: (the VM, whether it changed, whether its phase did).
        Raises RequestError when the node does not own its run or the run already ended."""
        vm = self._owned_vm(request.node_name, request.name, request.uid, request.instance_uid, vm)
        if vm.status.phase in vm_status.TERMINAL_PHASES and request.phase != vm.status.phase:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"VirtualMachine {request.name!r} already ended as "
                               f"{vm_status.phase_name(vm.status.phase)}")
        new_phase = (request.phase != vm_pb2.VIRTUAL_MACHINE_PHASE_UNSPECIFIED
                     and vm_status.set_phase(vm, request.phase))
        changed = new_phase
        running = request.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
        reason = request.reason or ("Running" if running else vm_status.phase_name(request.phase))
        changed |= vm_status.set_condition(vm, "Ready", running, reason, request.message)
        if request.serial_log_path and vm.status.serial_log_path != request.serial_log_path:
            vm.status.serial_log_path = request.serial_log_path
            changed = True
        changed |= apply_run_report(vm, request, new_phase=new_phase, reason=reason)
        return vm, changed, new_phase

    @grpc_errors
    @retry(retry=retry_if_exception_type(Conflict), stop=stop_after_attempt(8), reraise=True)
    def ReleaseVirtualMachine(self, request, context):
        auth.require_node(context, request.node_name)
        vm = self._owned_vm(request.node_name, request.name, request.uid)
        if not vm.metadata.HasField("delete_time"):
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"VirtualMachine {request.name!r} was not asked to be deleted")
        self.store.delete(VMS, request.name, resource_version=vm.metadata.resource_version)
        # The run's instance lock (taken with the assignment, or by the node) goes with it, even
        # for a run the node never started: a VM made again under this name must not wait for it.
        lock = self.store.raw_key(INSTANCE_LOCKS_FOLDER + request.name)
        self.store.txn([T.Value(lock) == instance_lock_value(request.node_name, vm.status.instance_uid)],
                       [T.Delete(lock)])
        log_vm(log, vm, "vm %s released by node %s and deleted", request.name, request.node_name)
        return handler_pb2.ReleaseVirtualMachineResponse()

    @grpc_errors
    @retry(retry=retry_if_exception_type(Conflict), stop=stop_after_attempt(8), reraise=True)
    def ReportMigrationStatus(self, request, context):
        auth.require_node(context, request.node_name)
        vm = self.store.get(VMS, request.vm_name)
        migration = self.store.get(MIGRATIONS, request.migration_name)
        target = vm.status.migration_target
        role_node = vm.status.node_name if request.role == handler_pb2.MIGRATION_ROLE_SOURCE else target.node_name
        late = (migration.status.phase == migration_pb2.MIGRATION_PHASE_SUCCEEDED
                and request.node_name in (migration.status.source_node, migration.status.target_node))
        if vm.metadata.uid != request.vm_uid or migration.spec.vm_name != request.vm_name or not late and (
                target.migration_name != request.migration_name or role_node != request.node_name):
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"node {request.node_name!r} takes no part in migration {request.migration_name!r} "
                               f"of VirtualMachine {request.vm_name!r} (now)")
        vm_changed, migration_changed = apply_migration_report(vm, migration, request)
        # Both in one transaction: the leader must never see the VM's target cleared while the
        # migration still runs (it would fail it as superseded), nor the reverse.
        changed = [(kind, obj) for kind, obj, did in ((VMS, vm, vm_changed), (MIGRATIONS, migration,
                                                                                migration_changed)) if did]
        if changed and not self.store.update_together(changed):
            raise Conflict(f"VirtualMachine {request.vm_name!r} or migration {request.migration_name!r} changed "
                           "meanwhile")  # read both again (the retry)
        return handler_pb2.ReportMigrationStatusResponse()

    def GetStoreHealth(self, request, context):
        """Not wrapped in grpc_errors: an unreachable store is the answer, not an error."""
        refusal = auth.node_refusal(context.auth_context(), request.node_name)
        if refusal:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        try:
            self.store.range(self.store.raw_key("leader"), timeout=STORE_HEALTH_TIMEOUT)
        except StoreError as exc:
            return handler_pb2.GetStoreHealthResponse(store_reachable=False, message=str(exc))
        return handler_pb2.GetStoreHealthResponse(store_reachable=True, message="the store answers")
