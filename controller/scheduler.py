"""The leader's reconciler: puts Pending VMs on nodes that fit (or says why none does),
declares runs on lost nodes over once those nodes had time to fence themselves, and starts
new runs per run strategy.

It wakes on changes under the Corral prefix (at most every MIN_PASS_INTERVAL_SECONDS) and
reads one consistent view from the replica's watch cache (no etcd read, no decoding): the VMs
changed since its last pass and every node's scheduling view (kept by the cache event by
event), so a pass costs the changes, not every VM or node. A full pass, every resync period,
when a node record or a node's readiness changed, and when the set of lost nodes changed,
looks again at every VM that is not settled (lifecycle.settled) and every VM on a node that
is not Ready: what waits on time (back-off, unschedulable VMs, lost nodes) is retried then. Each decision
is written guarded by the VM's revision and the leader's fencing token. Before the next pass
it waits until the cache has seen its own writes, so capacity is never counted from a view
that misses the assignments just made."""
from __future__ import annotations

import logging
import threading
import time
import uuid

from controller import lifecycle
from controller.migrations import MigrationReconciler
from controller.pool_reconciler import PoolReconciler
from controller.watch_cache import SchedulingView, WatchCache
from corral import metrics, scheduling, status as vm_status
from corral.logs import log_vm
from corral.resources import INSTANCE_LOCKS_FOLDER, VMS, instance_lock_value
from corral.store import Conflict, Fence, FencingLost, NotFound, Store, StoreError
from corral.v1 import vm_pb2

log = logging.getLogger(__name__)

UNSCHEDULABLE = "Unschedulable"
#: Assignments written per etcd transaction: each is a put of the VM, one of its "Scheduled"
#: event (corral/history.py) and one of its instance lock, and etcd allows 128 operations (and
#: 128 comparisons) in one by default.
ASSIGN_BATCH = 40
#: Passes start at most this often. In a storm of changes a pass then takes in this long's
#: worth (more assignments per transaction, a pass's fixed costs paid less often); a change
#: after a quiet spell is looked at at once.
MIN_PASS_INTERVAL_SECONDS = 0.05


def _copy(vm: vm_pb2.VirtualMachine) -> vm_pb2.VirtualMachine:
    """A VM to change: snapshot objects may be the watch cache's own."""
    copy = vm_pb2.VirtualMachine()
    copy.CopyFrom(vm)
    return copy


def _steady(vm: vm_pb2.VirtualMachine, views: dict, lost: set[str]) -> bool:
    """Nothing for the scheduler to do: a settled run on a node that is not lost (skipped
    without a copy)."""
    node = vm.status.node_name
    return lifecycle.settled(vm) and node in views and node not in lost


class Scheduler:
    def __init__(self, *, store: Store, resync_seconds: float, node_loss_margin_seconds: float,
                 cache: WatchCache, migrations: MigrationReconciler | None = None,
                 pools: PoolReconciler | None = None) -> None:
        self.store = store
        self.cache = cache
        self._last_full = float("-inf")  # monotonic time of the last full pass (none yet as leader)
        self._nodes_generation = -1
        self._lost: set[str] = set()
        self._assigned: list[vm_pb2.VirtualMachine] = []  # decided this pass, not written yet
        # Runs declared over on lost nodes, each with the instance lock that must not exist.
        self._lost_runs: list[tuple[vm_pb2.VirtualMachine, bytes]] = []
        self.migrations = migrations
        self.pools = pools
        self.resync_seconds = resync_seconds
        self.node_loss_margin = node_loss_margin_seconds
        # When this leader first saw each node NotReady. A new leader starts counting afresh:
        # later is always safe.
        self.not_ready_since: dict[str, float] = {}
        self._not_ready: tuple[int, set[str]] = (-1, set())  # (nodes generation, nodes known, not Ready)

    def run(self, fence: Fence, stop: threading.Event) -> None:
        """Reconcile until stop is set or leadership is lost."""
        self._last_full = float("-inf")  # a new term starts with a full pass
        self.cache.every_pool_next()  # ... that has every pool
        while not stop.is_set():
            try:
                started = time.monotonic()
                revision = self.reconcile(fence)
                self._wait_for_change(revision, stop)
                stop.wait(started + MIN_PASS_INTERVAL_SECONDS - time.monotonic())
            except FencingLost:
                log.warning("fencing token %d lost: no longer leading", fence.token)
                return
            except StoreError as exc:
                metrics.RECONCILE_ERRORS.labels("scheduler").inc()
                log.warning("scheduler: %s", exc)
                stop.wait(1.0)

    def _wait_for_change(self, revision: int, stop: threading.Event) -> None:
        written = self.store.last_write_revision
        if written > revision:  # this pass wrote: go again once the cache has those writes
            self.cache.wait_newer(written - 1, timeout=5.0, stop=stop.is_set)
        else:
            due = self._last_full + self.resync_seconds - time.monotonic()
            self.cache.wait_newer(revision, timeout=max(0.01, due), stop=stop.is_set)

    def reconcile(self, fence: Fence) -> int:
        """One pass; returns the revision it read at."""
        full = (time.monotonic() - self._last_full >= self.resync_seconds
                or self.cache.nodes_generation != self._nodes_generation)
        view = self.cache.scheduling_view(full)
        lost = self._lost_nodes(view)
        if not full and lost != self._lost:  # runs on those nodes are over: look at every VM
            view = self.cache.scheduling_view(True)
        if view.full:
            self._last_full = time.monotonic()
            self._nodes_generation = view.nodes_generation
        self._lost = lost
        views = view.views
        now = time.time()
        self._assigned = []
        self._lost_runs = []
        unsteady = [vm for vm in view.vms if not _steady(vm, views, lost)]
        for vm in sorted(unsteady, key=lambda v: (v.metadata.create_time.ToNanoseconds(), v.metadata.name)):
            try:
                self._reconcile_vm(_copy(vm), fence, views, lost, now)
            except (Conflict, NotFound):
                continue  # changed meanwhile: the next pass sees the new version
            if len(self._assigned) >= ASSIGN_BATCH:
                self._write_assignments(fence)
            if len(self._lost_runs) >= ASSIGN_BATCH:
                self._write_lost_runs(fence)
        self._write_assignments(fence)
        self._write_lost_runs(fence)
        if self.migrations is not None:
            self.migrations.reconcile(fence, view.migrations, self.cache.vms.get, views, lost)
        if self.pools is not None:  # the VMs it creates are placed in the next pass
            work = self.cache.pool_work(view.full)
            try:
                self.pools.reconcile(fence, work, view.nodes)
            except BaseException:
                self.cache.look_again([name for name, _, _ in work])  # some may not have been reached
                raise
        return view.revision

    def _lost_nodes(self, view: SchedulingView) -> set[str]:
        """Nodes NotReady for longer than the margin: their handlers have fenced their guests
        (they stop them before their lease can expire), so their runs are over."""
        now = time.monotonic()
        if view.nodes_generation != self._not_ready[0]:  # readiness changes only with the generation
            self._not_ready = (view.nodes_generation, view.nodes.keys() - view.ready)
        for name in list(self.not_ready_since):
            if name in view.ready:
                del self.not_ready_since[name]
        for name in self._not_ready[1]:
            self.not_ready_since.setdefault(name, now)
        return {name for name, since in self.not_ready_since.items() if now - since >= self.node_loss_margin}

    def _reconcile_vm(self, vm: vm_pb2.VirtualMachine, fence: Fence, views, lost: set[str], now: float) -> None:
        phase = vm.status.phase
        node = vm.status.node_name
        deleting = vm.metadata.HasField("delete_time")
        if node and (node in lost or node not in views) and phase not in vm_status.TERMINAL_PHASES:
            if deleting:
                self.store.delete(VMS, vm.metadata.name, resource_version=vm.metadata.resource_version, fence=fence)
                log.info("vm %s deleted: its node %s is lost", vm.metadata.name, node)
                return
            lifecycle.mark_lost(vm, node)
            # Only while no lock of the run exists: a node that came back and reclaimed it
            # keeps its guest, and then this write fails. (Batched: a node lost with
            # hundreds of VMs is one transaction per batch, not one per VM.)
            self._lost_runs.append((vm, self.store.raw_key(INSTANCE_LOCKS_FOLDER + vm.metadata.name)))
            return
        if deleting:
            return
        if (vm.status.snapshot_in_progress or vm.status.restore_in_progress) and phase not in vm_status.LIVE_PHASES:
            return  # its disks are being snapshotted or restored: no run starts (controller/snapshots.py)
        if phase in vm_status.LIVE_PHASES and lifecycle.strategy(vm) == vm_pb2.RUN_STRATEGY_HALTED \
                and not vm_status.run_request_applies(vm):
            # Someone set Halted on a running VM: stop its run, as KubeVirt does.
            lifecycle.stop(vm, grace_period_seconds=None, force=False)
            self.store.update(VMS, vm, fence=fence)
            return
        if phase in vm_status.TERMINAL_PHASES and lifecycle.wants_restart(vm):
            asked = vm_status.run_request_applies(vm)
            delay = lifecycle.restart(vm, now_seconds=now)
            why = "restart requested" if asked else f"run strategy {vm_status.run_strategy_name(vm.spec.run_strategy)}"
            if delay:
                vm_status.record_event(vm, "CrashLoopBackOff", f"{why}: next run in {delay:.0f}s", warning=True)
            else:
                vm_status.record_event(vm, "Restarting", f"{why}: starting a new run")
            self.store.update(VMS, vm, fence=fence)
            log.info("vm %s: starting a new run (%s)%s", vm.metadata.name, why,
                     f" after {delay:.0f}s back-off" if delay else "")
            return
        if phase != vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING:
            return
        if lifecycle.strategy(vm) == vm_pb2.RUN_STRATEGY_HALTED:
            if vm_status.set_condition(vm, "Scheduled", False, "Halted", "run strategy Halted: not started"):
                self.store.update(VMS, vm, fence=fence)
            return
        if lifecycle.waiting_for_backoff(vm, now):
            return
        chosen, why = scheduling.choose_node(vm.spec, views)
        if chosen:
            self._assign(vm, chosen, fence)
            scheduling.add_to(views, chosen, vm.spec)
        else:
            self._mark_unschedulable(vm, why, fence)

    def _assign(self, vm: vm_pb2.VirtualMachine, node: str, fence: Fence) -> None:
        vm.status.node_name = node
        vm.status.instance_uid = str(uuid.uuid4())
        vm.status.assignment_token = fence.token
        vm.status.instance_lock_lease = 0  # set by _instance_locks when the lock is made with it
        vm.status.run_start_time.CopyFrom(vm_status.now())
        vm_status.set_phase(vm, vm_pb2.VIRTUAL_MACHINE_PHASE_SCHEDULED)
        vm_status.set_condition(vm, "Scheduled", True, "Scheduled", f"assigned to node {node}")
        vm_status.record_event(vm, "Scheduled", f"run {vm.status.instance_uid} assigned to node {node}")
        self._assigned.append(vm)  # written with others in one transaction (_write_assignments)

    def _instance_locks(self, batch: list[vm_pb2.VirtualMachine]) -> list[tuple[bytes, bytes, int]]:
        """Each new run's instance lock, bound to its node's lease, created with the assignment
        (what the node's handler would take before starting it: it finds the lock already its
        own, handler/fencing.py). Saves the node an etcd write per start; a node without a known
        lease, or a lock still held by an earlier run, is left to the handler as before."""
        locks = []
        for vm in batch:
            lease = self.cache.node_leases.get(vm.status.node_name)
            if lease and vm.metadata.name not in self.cache.locked:
                locks.append((self.store.raw_key(INSTANCE_LOCKS_FOLDER + vm.metadata.name),
                              instance_lock_value(vm.status.node_name, vm.status.instance_uid), lease))
                vm.status.instance_lock_lease = lease  # the node need not take it (written together)
        return locks

    def _write_assignments(self, fence: Fence) -> None:
        """The pass's assignments, with each new run's instance lock."""
        batch, self._assigned = self._assigned, []
        for vm in self._write_batch([(vm, None) for vm in batch], fence, create=self._instance_locks(batch)):
            metrics.observe_scheduled(vm)
            log_vm(log, vm, "scheduled vm %s (run %s) on node %s", vm.metadata.name, vm.status.instance_uid,
                   vm.status.node_name)

    def _write_lost_runs(self, fence: Fence) -> None:
        """Runs on lost nodes declared over, each only while its instance lock does not exist
        (a node that came back and holds it keeps its guest)."""
        batch, self._lost_runs = self._lost_runs, []
        for vm in self._write_batch(batch, fence):
            log.warning("vm %s: run %s on lost node %s is over", vm.metadata.name, vm.status.instance_uid,
                        vm.status.node_name)

    def _write_batch(self, batch: list[tuple[vm_pb2.VirtualMachine, bytes | None]], fence: Fence, *,
                     create: list[tuple[bytes, bytes, int]] = ()) -> list[vm_pb2.VirtualMachine]:
        """Write up to ASSIGN_BATCH VMs in one transaction (each guarded by its revision, the
        fencing token and, when given, the absence of a key); a batch that meets a change is
        written one by one. Returns the VMs written."""
        if not batch:
            return []
        vms = [vm for vm, _ in batch]
        if self.store.update_all(VMS, vms, fence=fence, create=create,
                                 absent=[key for _, key in batch if key is not None]):
            return vms
        written = []
        for vm, absent in batch:
            vm.status.instance_lock_lease = 0  # one by one, no lock is made with it: the node takes it
            try:
                self.store.update(VMS, vm, fence=fence, absent=absent)
                written.append(vm)
            except (Conflict, NotFound):
                continue  # changed meanwhile (or its node came back): the next pass sees it
        return written

    def _mark_unschedulable(self, vm: vm_pb2.VirtualMachine, why: str, fence: Fence) -> None:
        if vm_status.set_condition(vm, "Scheduled", False, UNSCHEDULABLE, why):
            vm_status.record_event(vm, UNSCHEDULABLE, why, warning=True)
            self.store.update(VMS, vm, fence=fence)
            log_vm(log, vm, "vm %s unschedulable: %s", vm.metadata.name, why)

