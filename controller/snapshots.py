"""VirtualMachineSnapshots: the decisions (pure, on messages) and the leader's reconciler that
carries snapshots, restores and deletions out through the nodes' NodeAgentService.

Ordering keeps a crash harmless: before a node touches a VM's disks the leader marks the VM
(status.snapshot_in_progress or restore_in_progress: no run starts and no migration begins
while set, controller/scheduler.py), and each node call is idempotent by the snapshot's tag,
so a new leader repeats the step it finds half done. A marker is cleared after the snapshot's
outcome is written; a marker left by a crash names a snapshot that ended, and the sweep clears
it."""
from __future__ import annotations

import logging
import threading
import time

import grpc

from controller import lifecycle
from controller.errors import RequestError
from controller.node_agents import NodeAgents, upstream_error
from controller.nodes import ready_node_names
from corral import status as vm_status
from corral.resources import MIGRATIONS, SNAPSHOTS, VMS
from corral.snapshots import snapshot_disks, writable_disks
from corral.store import Conflict, Fence, FencingLost, NotFound, Store, StoreError
from corral.v1 import migration_pb2, snapshot_pb2, vm_pb2

log = logging.getLogger(__name__)
S = snapshot_pb2
FINAL = (S.SNAPSHOT_PHASE_SUCCEEDED, S.SNAPSHOT_PHASE_FAILED)
#: A node call: freezing, QEMU's transaction and qemu-img on a slow disk.
NODE_CALL_SECONDS = 150.0
#: Errors worth retrying on the next pass (the node is away or busy), not failing the snapshot.
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
               grpc.StatusCode.ABORTED)  # ABORTED: the VM's run is still ending on the node
#: How long a snapshot or restore keeps the VM held while its node does not answer: then it
#: fails and the VM is free to run again (a lost node must not keep its VM from restarting).
NODE_WAIT_SECONDS = 300.0


def waiting_reason(code: grpc.StatusCode) -> str:
    """What a retried node call waits for: the node, or the end of the VM's last run there."""
    return "RunEnding" if code == grpc.StatusCode.ABORTED else "NodeUnavailable"


def waited_too_long(since, now: float | None = None) -> bool:
    """Whether more than NODE_WAIT_SECONDS passed since the Timestamp ``since``."""
    return (now if now is not None else time.time()) - since.ToNanoseconds() / 1e9 > NODE_WAIT_SECONDS


def phase_name(phase: int) -> str:
    return S.SnapshotPhase.Name(phase).removeprefix("SNAPSHOT_PHASE_").replace("_", "").title().replace(
        "Inprogress", "InProgress")


def set_phase(snapshot: S.VirtualMachineSnapshot, phase: int, reason: str, message: str = "") -> bool:
    """Phase and the conditions that go with it (Ready, Progressing, Failure), as KubeVirt's;
    whether anything changed (unchanged objects are not written again)."""
    changed = snapshot.status.phase != phase
    snapshot.status.phase = phase
    changed |= vm_status.set_condition(snapshot, "Ready", phase == S.SNAPSHOT_PHASE_SUCCEEDED, reason, message)
    changed |= vm_status.set_condition(snapshot, "Progressing", phase in (S.SNAPSHOT_PHASE_PENDING,
                                                                         S.SNAPSHOT_PHASE_IN_PROGRESS), reason, message)
    changed |= vm_status.set_condition(snapshot, "Failure", phase == S.SNAPSHOT_PHASE_FAILED, reason,
                                       message if phase == S.SNAPSHOT_PHASE_FAILED else "")
    return changed


def migrating(vm: vm_pb2.VirtualMachine, migrations: list[migration_pb2.Migration]) -> str:
    """The migration moving or about to move the VM ("" when none)."""
    if vm.status.migration_target.migration_name:
        return vm.status.migration_target.migration_name
    for migration in migrations:
        if migration.spec.vm_name == vm.metadata.name and migration.status.phase not in (
                migration_pb2.MIGRATION_PHASE_SUCCEEDED, migration_pb2.MIGRATION_PHASE_FAILED):
            return migration.metadata.name
    return ""


def stopped(vm: vm_pb2.VirtualMachine) -> bool:
    """No run, and none about to start by itself (a Halted VM, or an ended run its strategy
    does not follow with another)."""
    if vm.status.phase in vm_status.LIVE_PHASES:
        return False
    if vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING:
        return lifecycle.strategy(vm) == vm_pb2.RUN_STRATEGY_HALTED or vm.status.HasField("saved_state")
    return not lifecycle.wants_restart(vm)


def snapshot_refusal(vm: vm_pb2.VirtualMachine, migrations: list[migration_pb2.Migration]) -> str:
    """Why a snapshot of the VM cannot be taken now ("" when it can): FAILED_PRECONDITION."""
    name = vm.metadata.name
    if vm.metadata.HasField("delete_time"):
        return f"VirtualMachine {name!r} is being deleted"
    moving = migrating(vm, migrations)
    if moving:
        return f"VirtualMachine {name!r} is being migrated (migration {moving}): snapshot it before or after"
    if vm.status.HasField("saved_state"):
        return f"VirtualMachine {name!r} is Saved: its memory state would not match a disk snapshot; restore or stop it first"
    if vm.status.restore_in_progress:
        return f"VirtualMachine {name!r} is being restored from snapshot {vm.status.restore_in_progress}"
    if not stopped(vm) and vm.status.phase != vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING:
        return f"VirtualMachine {name!r} is starting: snapshot it once it is Running, or stopped"
    _held, _skipped, problems = snapshot_disks(vm)
    if problems:
        return f"VirtualMachine {name!r} cannot be snapshotted: " + "; ".join(problems)
    return ""


def restore_refusal(vm: vm_pb2.VirtualMachine, snapshot: S.VirtualMachineSnapshot) -> str:
    """Why the snapshot cannot be restored onto the VM now ("" when it can)."""
    name = vm.metadata.name
    if vm.metadata.uid != snapshot.status.vm_uid:
        return f"VirtualMachine {name!r} is not the VM snapshot {snapshot.metadata.name!r} was taken of (its uid changed)"
    if snapshot.status.phase != S.SNAPSHOT_PHASE_SUCCEEDED or snapshot.metadata.HasField("delete_time"):
        return f"snapshot {snapshot.metadata.name!r} is {phase_name(snapshot.status.phase)}: only a Succeeded one can be restored"
    if vm.metadata.HasField("delete_time"):
        return f"VirtualMachine {name!r} is being deleted"
    if not stopped(vm):
        return (f"VirtualMachine {name!r} is {vm_status.printable_status(vm)}: stop it first "
                f"(corral stop {name}); a restore needs the VM stopped")
    if vm.status.HasField("saved_state"):
        return f"VirtualMachine {name!r} is Saved: stop it (discarding the saved state) first"
    if vm.status.snapshot_in_progress or vm.status.restore_in_progress:
        return f"VirtualMachine {name!r} is busy with snapshot {vm.status.snapshot_in_progress or vm.status.restore_in_progress}"
    held = {name: path for name, (path, _fmt, _ro) in writable_disks(vm).items()}
    for disk in snapshot.status.disks:
        if held.get(disk.name) != disk.path:
            return f"disk {disk.name!r} of VirtualMachine {name!r} is no longer {disk.path!r}: the snapshot cannot go back"
    return ""


def targets(snapshot: S.VirtualMachineSnapshot) -> list[S.DiskSnapshotTarget]:
    return [S.DiskSnapshotTarget(name=d.name, path=d.path, format=vm_pb2.DISK_FORMAT_QCOW2)
            for d in snapshot.status.disks]


class SnapshotReconciler:
    """The leader's loop over snapshots (own thread: node calls take seconds)."""

    def __init__(self, *, store: Store, agents: NodeAgents, interval: float = 1.0, cache=None) -> None:
        self.store = store
        self.agents = agents
        self.interval = interval
        self.cache = cache  # the replica's WatchCache: VMs without reading etcd (None: read etcd)

    def run(self, fence: Fence, stop: threading.Event) -> None:
        """A pass at once on any change of a snapshot (a watch), else every ``interval``."""
        wake = threading.Event()
        threading.Thread(target=self._watch, args=(wake, stop), name="snapshot-watch", daemon=True).start()
        while not stop.is_set():
            wake.clear()
            try:
                self.reconcile(fence)
            except FencingLost:
                log.warning("snapshots: fencing token %d lost", fence.token)
                return
            except StoreError as exc:
                log.warning("snapshots: %s", exc)
            except Exception:  # noqa: BLE001 - keep reconciling
                log.exception("snapshots: reconcile failed")
            wake.wait(self.interval)

    def _watch(self, wake: threading.Event, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                with self.store.watch(SNAPSHOTS, start_revision=self.store.revision() + 1) as watch:
                    wake.set()  # anything missed while (re)connecting
                    for event in watch.events(timeout=0.5):
                        if stop.is_set():
                            return
                        if event is not None:
                            wake.set()
            except StoreError as exc:
                log.debug("snapshot watch: %s", exc)
                stop.wait(1.0)

    def reconcile(self, fence: Fence) -> None:
        snapshots, _ = self.store.list_all(SNAPSHOTS)
        by_name = {s.metadata.name: s for s in snapshots}
        for snapshot in snapshots:
            try:
                if snapshot.metadata.HasField("delete_time"):
                    self._delete(snapshot, fence)
                elif snapshot.status.phase not in FINAL:
                    self._take(snapshot, fence)
                elif snapshot.status.restore.phase == S.RESTORE_PHASE_IN_PROGRESS:
                    self._restore(snapshot, fence)
            except (Conflict, NotFound):
                continue  # changed meanwhile: the next pass sees it
        self._sweep(by_name, fence)

    # -- steps -------------------------------------------------------------------------------
    def _vm(self, snapshot: S.VirtualMachineSnapshot) -> vm_pb2.VirtualMachine | None:
        try:
            vm = self.store.get(VMS, snapshot.spec.vm_name)
        except NotFound:
            return None
        return vm if vm.metadata.uid == snapshot.status.vm_uid else None

    def _disks_node(self, vm: vm_pb2.VirtualMachine, snapshot: S.VirtualMachineSnapshot) -> str:
        """Where a stopped VM's disks are: its last run's node, else the snapshot's, when Ready;
        else any Ready node (disks on shared storage; a node without the file says so); with
        none Ready, the last run's node (the call fails UNAVAILABLE and is retried)."""
        known = [n for n in (vm.status.node_name, *(r.node_name for r in reversed(vm.status.runs)),
                             snapshot.status.node_name) if n]
        ready = ready_node_names(self.store)
        for name in known:
            if name in ready:
                return name
        return sorted(ready)[0] if ready else (known[0] if known else "")

    def _mark(self, vm: vm_pb2.VirtualMachine, field: str, value: str, fence: Fence) -> vm_pb2.VirtualMachine:
        if getattr(vm.status, field) == value:
            return vm
        setattr(vm.status, field, value)
        return self.store.update(VMS, vm, fence=fence)

    def _fail(self, snapshot: S.VirtualMachineSnapshot, reason: str, message: str, fence: Fence) -> None:
        set_phase(snapshot, S.SNAPSHOT_PHASE_FAILED, reason, message)
        self.store.update(SNAPSHOTS, snapshot, fence=fence)
        log.warning("snapshot %s failed: %s: %s", snapshot.metadata.name, reason, message)

    def _call(self, node: str, method: str, request):
        """The node's answer, or RequestError (the node's code; retry codes kept)."""
        if not node:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "no node holds the VM's disks (no Ready node)")
        try:
            return getattr(self.agents.stub(node), method)(request, timeout=NODE_CALL_SECONDS)
        except grpc.RpcError as exc:
            raise upstream_error(exc, node) from None

    def _take(self, snapshot: S.VirtualMachineSnapshot, fence: Fence) -> None:
        vm = self._vm(snapshot)
        if vm is None:
            return self._fail(snapshot, "VirtualMachineGone", f"VirtualMachine {snapshot.spec.vm_name!r} was deleted", fence)
        if snapshot.status.phase == S.SNAPSHOT_PHASE_PENDING:
            if vm.status.snapshot_in_progress not in ("", snapshot.metadata.name):
                return  # another snapshot's turn first
            if not stopped(vm) and vm.status.phase != vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING \
                    and not vm.metadata.HasField("delete_time"):
                return  # starting: once it runs or has stopped
            migrations, _ = self.store.list_all(MIGRATIONS)
            why = snapshot_refusal(vm, migrations)
            if why:
                return self._fail(snapshot, "Refused", why, fence)
            vm = self._mark(vm, "snapshot_in_progress", snapshot.metadata.name, fence)
            live = vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
            snapshot.status.instance_uid = vm.status.instance_uid if live else ""
            snapshot.status.node_name = vm.status.node_name if live else self._disks_node(vm, snapshot)
            set_phase(snapshot, S.SNAPSHOT_PHASE_IN_PROGRESS, "InProgress",
                      f"taking it {'of the running guest' if live else 'of the stopped VM'} on node "
                      f"{snapshot.status.node_name}")
            snapshot = self.store.update(SNAPSHOTS, snapshot, fence=fence)
        if snapshot.status.instance_uid and vm.status.instance_uid != snapshot.status.instance_uid:
            # The run ended meanwhile (no other starts: the VM is marked): take it offline.
            snapshot.status.instance_uid = ""
            snapshot.status.node_name = self._disks_node(vm, snapshot)
            snapshot = self.store.update(SNAPSHOTS, snapshot, fence=fence)
        started = time.monotonic()
        try:
            answer = self._call(snapshot.status.node_name, "TakeDiskSnapshots", S.TakeDiskSnapshotsRequest(
                name=vm.metadata.name, instance_uid=snapshot.status.instance_uid,
                tag=snapshot.status.disks[0].tag, disks=targets(snapshot)))
        except RequestError as exc:
            if exc.code in RETRY_CODES and not waited_too_long(snapshot.metadata.create_time):
                if set_phase(snapshot, S.SNAPSHOT_PHASE_IN_PROGRESS, waiting_reason(exc.code), str(exc)):
                    self.store.update(SNAPSHOTS, snapshot, fence=fence)
                return
            self._fail(snapshot, waiting_reason(exc.code) if exc.code in RETRY_CODES else "SnapshotFailed", str(exc), fence)
            self._mark(vm, "snapshot_in_progress", "", fence)
            return
        del snapshot.status.indications[:]
        snapshot.status.indications.extend(answer.indications)
        snapshot.status.creation_time.CopyFrom(vm_status.now())
        how = {"GuestAgent": "file systems frozen by the guest agent",
               "NoGuestAgent": f"not frozen ({answer.freeze_message or 'no guest agent'})"}
        note = "; ".join(how[i] for i in answer.indications if i in how) or "the VM was stopped"
        set_phase(snapshot, S.SNAPSHOT_PHASE_SUCCEEDED, "Succeeded",
                  f"taken in {time.monotonic() - started:.2f}s: {note}")
        self.store.update(SNAPSHOTS, snapshot, fence=fence)
        self._mark(vm, "snapshot_in_progress", "", fence)
        log.info("snapshot %s of vm %s succeeded (%s)", snapshot.metadata.name, vm.metadata.name, note)

    def _restore(self, snapshot: S.VirtualMachineSnapshot, fence: Fence) -> None:
        restore = snapshot.status.restore
        vm = self._vm(snapshot)
        if vm is None or vm.status.restore_in_progress != snapshot.metadata.name:
            # Gone, or a previous leader finished it and crashed before saying so here.
            restore.phase = S.RESTORE_PHASE_FAILED if vm is None else S.RESTORE_PHASE_SUCCEEDED
            restore.reason = "VirtualMachineGone" if vm is None else "Succeeded"
            restore.end_time.CopyFrom(vm_status.now())
            self.store.update(SNAPSHOTS, snapshot, fence=fence)
            return
        node = self._disks_node(vm, snapshot)
        try:
            self._call(node, "RestoreDiskSnapshots", S.RestoreDiskSnapshotsRequest(
                name=vm.metadata.name, tag=snapshot.status.disks[0].tag, disks=targets(snapshot)))
        except RequestError as exc:
            if exc.code in RETRY_CODES and not waited_too_long(restore.start_time):
                if restore.message != str(exc):
                    restore.message = str(exc)
                    self.store.update(SNAPSHOTS, snapshot, fence=fence)
                return
            restore.phase, restore.reason, restore.message = S.RESTORE_PHASE_FAILED, "RestoreFailed", str(exc)
            vm.status.restore_in_progress = ""
            vm_status.record_event(vm, "RestoreFailed", f"snapshot {snapshot.metadata.name}: {exc}", warning=True)
            self.store.update(VMS, vm, fence=fence)
        else:
            restore.phase, restore.reason, restore.message = S.RESTORE_PHASE_SUCCEEDED, "Succeeded", \
                f"disks put back on node {node}"
            vm.status.restore_in_progress = ""
            vm_status.record_event(vm, "Restored", f"disks put back as in snapshot {snapshot.metadata.name}")
            if restore.start:
                lifecycle.start(vm, now_seconds=time.time())
            self.store.update(VMS, vm, fence=fence)
        restore.end_time.CopyFrom(vm_status.now())
        self.store.update(SNAPSHOTS, snapshot, fence=fence)
        log.info("restore of vm %s from snapshot %s: %s", vm.metadata.name, snapshot.metadata.name, restore.reason)

    def _delete(self, snapshot: S.VirtualMachineSnapshot, fence: Fence) -> None:
        vm = self._vm(snapshot)
        has_data = snapshot.status.phase != S.SNAPSHOT_PHASE_PENDING and snapshot.status.disks
        if vm is not None and has_data:
            if vm.status.restore_in_progress == snapshot.metadata.name:
                return  # after the restore
            if vm.status.snapshot_in_progress not in ("", snapshot.metadata.name):
                return
            if vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_SCHEDULED or (
                    not stopped(vm) and vm.status.phase != vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING):
                return  # starting: once it runs or stops
            vm = self._mark(vm, "snapshot_in_progress", snapshot.metadata.name, fence)
            live = vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
            node = vm.status.node_name if live else self._disks_node(vm, snapshot)
            try:
                self._call(node, "DeleteDiskSnapshots", S.DeleteDiskSnapshotsRequest(
                    name=vm.metadata.name, instance_uid=vm.status.instance_uid if live else "",
                    tag=snapshot.status.disks[0].tag, disks=targets(snapshot)))
            except RequestError as exc:
                # Free the VM meanwhile (it may run); the next pass tries again.
                if exc.code not in RETRY_CODES and set_phase(snapshot, snapshot.status.phase, "DeleteFailed", str(exc)):
                    self.store.update(SNAPSHOTS, snapshot, fence=fence)
                self._mark(vm, "snapshot_in_progress", "", fence)
                log.warning("snapshot %s: deleting its data: %s", snapshot.metadata.name, exc)
                return
        self.store.delete(SNAPSHOTS, snapshot.metadata.name, resource_version=snapshot.metadata.resource_version,
                          fence=fence)
        if vm is not None and vm.status.snapshot_in_progress == snapshot.metadata.name:
            self._mark(vm, "snapshot_in_progress", "", fence)
        log.info("snapshot %s deleted", snapshot.metadata.name)

    def _sweep(self, by_name: dict[str, S.VirtualMachineSnapshot], fence: Fence) -> None:
        """Clear markers a crash left: naming a snapshot that is gone or ended."""
        for vm_name in {s.spec.vm_name for s in by_name.values()} | self._marked_vm_names():
            try:
                vm = self.store.get(VMS, vm_name)
            except NotFound:
                continue
            mark = vm.status.snapshot_in_progress
            snapshot = by_name.get(mark)
            if mark and (snapshot is None or (snapshot.status.phase in FINAL
                                              and not snapshot.metadata.HasField("delete_time"))):
                try:
                    self._mark(vm, "snapshot_in_progress", "", fence)
                except (Conflict, NotFound):
                    pass
            mark = vm.status.restore_in_progress
            if mark and (mark not in by_name or by_name[mark].status.restore.phase != S.RESTORE_PHASE_IN_PROGRESS):
                try:
                    self._mark(vm, "restore_in_progress", "", fence)
                except (Conflict, NotFound):
                    pass

    def _marked_vm_names(self) -> set[str]:
        """VMs whose marker names a snapshot deleted meanwhile (rare: read every minute)."""
        now = time.monotonic()
        if now - getattr(self, "_last_full_sweep", float("-inf")) < 60:
            return set()
        self._last_full_sweep = now
        vms = self.cache.snapshot()[2] if self.cache is not None else self.store.list_all(VMS)[0]
        return {vm.metadata.name for vm in vms if vm.status.snapshot_in_progress or vm.status.restore_in_progress}
