"""The leader's reconciler: puts PENDING VMs on nodes that fit, or says why none does.

It wakes on every change under the Corral prefix and at least every resync period, reads
one consistent snapshot, and writes each decision guarded by the VM's revision and the
leader's fencing token."""
from __future__ import annotations

import logging
import threading

from controller.nodes import snapshot
from corral import scheduling, status as vm_status
from corral.resources import VMS
from corral.store import Conflict, Fence, FencingLost, NotFound, Store, StoreError
from corral.v1 import vm_pb2

log = logging.getLogger(__name__)

UNSCHEDULABLE = "Unschedulable"


class Scheduler:
    def __init__(self, *, store: Store, resync_seconds: float) -> None:
        self.store = store
        self.resync_seconds = resync_seconds

    def run(self, fence: Fence, stop: threading.Event) -> None:
        """Reconcile until stop is set or leadership is lost."""
        while not stop.is_set():
            try:
                revision = self.reconcile(fence)
                self._wait_for_change(revision, stop)
            except FencingLost:
                log.warning("fencing token %d lost: no longer leading", fence.token)
                return
            except StoreError as exc:
                log.warning("scheduler: %s", exc)
                stop.wait(1.0)

    def _wait_for_change(self, revision: int, stop: threading.Event) -> None:
        raw = self.store.watch_everything(start_revision=revision + 1)
        try:
            waited = 0.0
            for response in raw.responses(timeout=0.2):
                if stop.is_set():
                    return
                if response is not None and response.events:
                    return
                waited += 0.2 if response is None else 0.0
                if waited >= self.resync_seconds:
                    return
        finally:
            raw.close()

    def reconcile(self, fence: Fence) -> int:
        """One pass; returns the revision it read at."""
        nodes, ready, vms, revision = snapshot(self.store)
        views = scheduling.build_views(nodes, ready, vms)
        for vm in sorted(vms, key=lambda v: (v.metadata.create_time.ToNanoseconds(), v.metadata.name)):
            if vm.status.phase != vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING or vm.metadata.HasField("delete_time"):
                continue
            node, why = scheduling.choose_node(vm.spec, views)
            try:
                if node:
                    self._assign(vm, node, fence)
                    views[node].add(vm.spec)
                else:
                    self._mark_unschedulable(vm, why, fence)
            except (Conflict, NotFound):
                continue  # changed meanwhile: the next pass sees the new version
        return revision

    def _assign(self, vm: vm_pb2.VirtualMachine, node: str, fence: Fence) -> None:
        vm.status.node_name = node
        vm_status.set_phase(vm, vm_pb2.VIRTUAL_MACHINE_PHASE_SCHEDULED)
        vm_status.set_condition(vm, "Scheduled", True, "Scheduled", f"assigned to node {node}")
        self.store.update(VMS, vm, fence=fence)
        log.info("scheduled vm %s on node %s", vm.metadata.name, node)

    def _mark_unschedulable(self, vm: vm_pb2.VirtualMachine, why: str, fence: Fence) -> None:
        if vm_status.set_condition(vm, "Scheduled", False, UNSCHEDULABLE, why):
            self.store.update(VMS, vm, fence=fence)
            log.info("vm %s unschedulable: %s", vm.metadata.name, why)

