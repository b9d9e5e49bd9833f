"""The leader's SnapshotReconciler against a real etcd, with a stand-in for the node (which
records what it is asked and keeps each disk's tags, idempotent as the real node is): a
leader that dies after the node acted but before it wrote the outcome is replaced, and the new
leader finishes the job once: no tag taken twice, no restore without the VM held, no mark
left behind, and the old leader's late writes refused."""
from __future__ import annotations

import threading
import time
import uuid

import grpc
import pytest

from controller.scheduler import Scheduler
from controller.snapshot_api import VirtualMachineSnapshotService
from controller.snapshots import NODE_WAIT_SECONDS, SnapshotReconciler
from controller.watch_cache import WatchCache
from corral import history
from corral.resources import LEADER_KEY, SNAPSHOTS, VMS
from corral.store import Fence, FencingLost, Store
from corral.v1 import snapshot_pb2, vm_pb2
from pyetcd import transactions as T
from pyetcd import utils as etcd_utils

S = snapshot_pb2


class Crash(BaseException):
    """The leader process dies here (nothing catches it)."""


class FakeNode:
    """NodeAgentService's snapshot calls: tags per disk path; checks the VM is held meanwhile."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.tags: dict[str, set[str]] = {}
        self.calls: list[tuple[str, str]] = []
        self.taken: list[str] = []
        self.crash_after: set[str] = set()

    def _held(self, field: str) -> None:
        vm = self.store.get(VMS, "v")
        assert getattr(vm.status, field), f"the node was called while the VM had no {field}"

    def TakeDiskSnapshots(self, request, timeout):  # noqa: N802 - gRPC's name
        self.calls.append(("take", request.tag))
        self._held("snapshot_in_progress")
        for disk in request.disks:
            if request.tag not in self.tags.setdefault(disk.path, set()):
                self.tags[disk.path].add(request.tag)
                self.taken.append(request.tag)
        if "take" in self.crash_after:
            self.crash_after.discard("take")
            raise Crash()
        return S.TakeDiskSnapshotsResponse()

    def RestoreDiskSnapshots(self, request, timeout):  # noqa: N802
        self.calls.append(("restore", request.tag))
        self._held("restore_in_progress")
        assert self.store.get(VMS, "v").status.phase not in (vm_pb2.VIRTUAL_MACHINE_PHASE_SCHEDULED,
                                                            vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING)
        if "restore" in self.crash_after:
            self.crash_after.discard("restore")
            raise Crash()
        return S.RestoreDiskSnapshotsResponse()

    def DeleteDiskSnapshots(self, request, timeout):  # noqa: N802
        self.calls.append(("delete", request.tag))
        for disk in request.disks:
            self.tags.get(disk.path, set()).discard(request.tag)
        return S.DeleteDiskSnapshotsResponse()


class Agents:
    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def stub(self, name: str) -> FakeNode:
        assert name == "n1"
        return self.node


@pytest.fixture
def store(etcd):
    made = Store(endpoints=[etcd.endpoint], prefix=f"/t-{uuid.uuid4().hex[:8]}/")
    yield made
    made.close()


def lead(store: Store) -> Fence:
    """Become leader: (re)create the leader key; its create revision is the token."""
    key = store.raw_key(LEADER_KEY)
    store.txn([], [T.Delete(key)])
    response = store.txn([], [T.Put(key, b"test")])
    return Fence(key, response.header.revision)


def stopped_vm(store: Store) -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name, vm.metadata.uid = "v", str(uuid.uuid4())
    vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_HALTED
    vm.spec.disks.add(name="d", persistent=vm_pb2.PersistentDisk(path="/disks/d.qcow2", format=vm_pb2.DISK_FORMAT_QCOW2))
    vm.status.phase = vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED
    vm.status.node_name = "n1"
    return store.create(VMS, vm)


def test_a_leader_crash_between_the_node_and_the_outcome_is_finished_once(store):
    node = FakeNode(store)
    stopped_vm(store)
    api = VirtualMachineSnapshotService(store=store)
    created = api.CreateVirtualMachineSnapshot(S.CreateVirtualMachineSnapshotRequest(snapshot=S.VirtualMachineSnapshot(
        metadata={"name": "s"}, spec=S.VirtualMachineSnapshotSpec(vm_name="v"))), None).snapshot
    tag = created.status.disks[0].tag

    old = lead(store)
    node.crash_after.add("take")
    with pytest.raises(Crash):
        SnapshotReconciler(store=store, agents=Agents(node)).reconcile(old)
    assert store.get(SNAPSHOTS, "s").status.phase == S.SNAPSHOT_PHASE_IN_PROGRESS
    assert store.get(VMS, "v").status.snapshot_in_progress == "s"  # still held: no run may start

    new = lead(store)
    SnapshotReconciler(store=store, agents=Agents(node)).reconcile(new)
    assert store.get(SNAPSHOTS, "s").status.phase == S.SNAPSHOT_PHASE_SUCCEEDED
    assert node.taken == [tag] and node.calls == [("take", tag), ("take", tag)]
    assert store.get(VMS, "v").status.snapshot_in_progress == ""
    late = store.get(VMS, "v")
    late.status.snapshot_in_progress = "s"
    with pytest.raises(FencingLost):  # the dead leader's late write
        store.update(VMS, late, fence=old)

    # Restore, asking for a start; the leader dies after the node put the disks back.
    restored = api.RestoreVirtualMachineSnapshot(S.RestoreVirtualMachineSnapshotRequest(name="s", start=True), None)
    assert restored.snapshot.status.restore.phase == S.RESTORE_PHASE_IN_PROGRESS
    assert store.get(VMS, "v").status.restore_in_progress == "s"
    node.crash_after.add("restore")
    with pytest.raises(Crash):
        SnapshotReconciler(store=store, agents=Agents(node)).reconcile(new)
    newer = lead(store)
    SnapshotReconciler(store=store, agents=Agents(node)).reconcile(newer)
    vm = store.get(VMS, "v")
    assert vm.status.restore_in_progress == ""
    assert vm.spec.run_strategy == vm_pb2.RUN_STRATEGY_ALWAYS and vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING
    assert [e.reason for e in with_history(store, vm).status.events].count("Restored") == 1
    assert store.get(SNAPSHOTS, "s").status.restore.phase == S.RESTORE_PHASE_SUCCEEDED

    # A second restore is refused now: the VM is about to run (Pending, Always).
    with pytest.raises(Exception) as refused:
        api.RestoreVirtualMachineSnapshot(S.RestoreVirtualMachineSnapshotRequest(name="s"), _Context())
    assert "stop it first" in str(refused.value)

    # Delete: the tag goes from the disk, then the object; the VM is not left held.
    vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_HALTED
    vm.status.phase = vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED
    store.update(VMS, vm)
    api.DeleteVirtualMachineSnapshot(S.DeleteVirtualMachineSnapshotRequest(name="s"), None)
    SnapshotReconciler(store=store, agents=Agents(node)).reconcile(newer)
    assert node.tags["/disks/d.qcow2"] == set()
    assert store.list_all(SNAPSHOTS)[0] == []
    assert store.get(VMS, "v").status.snapshot_in_progress == ""


def with_history(store: Store, vm: vm_pb2.VirtualMachine) -> vm_pb2.VirtualMachine:
    """The VM with its events (kept beside it), as GetVirtualMachine shows it."""
    beside = store.raw_key(history.folder(vm.metadata.name))
    kvs = store.range(beside, etcd_utils.prefix_range_end(beside)).kvs
    copy = vm_pb2.VirtualMachine()
    copy.CopyFrom(vm)
    return history.merge(copy, [(kv.key[len(beside):].decode(), kv.value) for kv in kvs])


class _Context:
    def abort(self, code: grpc.StatusCode, message: str):
        raise RuntimeError(f"{code.name}: {message}")


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection refused"


class AwayNode(FakeNode):
    def TakeDiskSnapshots(self, request, timeout):  # noqa: N802
        self.calls.append(("take", request.tag))
        raise Unavailable()


def test_a_node_that_does_not_answer_holds_the_vm_only_for_a_while(store):
    node = AwayNode(store)
    stopped_vm(store)
    api = VirtualMachineSnapshotService(store=store)
    api.CreateVirtualMachineSnapshot(S.CreateVirtualMachineSnapshotRequest(snapshot=S.VirtualMachineSnapshot(
        metadata={"name": "s"}, spec=S.VirtualMachineSnapshotSpec(vm_name="v"))), None)
    fence = lead(store)
    reconciler = SnapshotReconciler(store=store, agents=Agents(node))
    reconciler.reconcile(fence)
    snapshot = store.get(SNAPSHOTS, "s")
    revision = snapshot.metadata.resource_version
    assert snapshot.status.phase == S.SNAPSHOT_PHASE_IN_PROGRESS
    assert next(c for c in snapshot.status.conditions if c.type == "Progressing").reason == "NodeUnavailable"
    assert store.get(VMS, "v").status.snapshot_in_progress == "s"
    reconciler.reconcile(fence)  # the same answer again: nothing written
    assert store.get(SNAPSHOTS, "s").metadata.resource_version == revision
    snapshot = store.get(SNAPSHOTS, "s")  # ... and then NODE_WAIT_SECONDS passed
    snapshot.metadata.create_time.FromSeconds(int(time.time() - NODE_WAIT_SECONDS - 1))
    store.update(SNAPSHOTS, snapshot)
    reconciler.reconcile(fence)
    snapshot = store.get(SNAPSHOTS, "s")
    assert snapshot.status.phase == S.SNAPSHOT_PHASE_FAILED
    assert next(c for c in snapshot.status.conditions if c.type == "Failure").reason == "NodeUnavailable"
    assert store.get(VMS, "v").status.snapshot_in_progress == ""  # free to run again


def test_the_scheduler_starts_no_run_of_a_held_vm(store):
    """An ended run of an Always VM is followed by another at once, except while a snapshot
    or restore holds the VM's disks; then it is, as soon as the mark is cleared."""
    cache = WatchCache(store)
    stop = threading.Event()
    threading.Thread(target=cache.run, args=(stop,), daemon=True).start()
    try:
        vm = stopped_vm(store)
        vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_ALWAYS
        vm.status.node_name = ""
        for mark in ("snapshot_in_progress", "restore_in_progress"):
            setattr(vm.status, mark, "s")
            vm = store.update(VMS, vm)
            scheduler = Scheduler(store=store, resync_seconds=0.0, node_loss_margin_seconds=5.0, cache=cache)
            fence = lead(store)
            cache.wait_newer(vm.metadata.resource_version - 1, timeout=5)
            scheduler.reconcile(fence)
            vm = store.get(VMS, "v")
            assert vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED, f"a run started while {mark} was set"
            setattr(vm.status, mark, "")
            vm = store.update(VMS, vm)
            cache.wait_newer(vm.metadata.resource_version - 1, timeout=5)
            scheduler.reconcile(fence)
            vm = store.get(VMS, "v")
            assert vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING  # the new run (no node here to place it)
            vm.status.phase = vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED
    finally:
        stop.set()
