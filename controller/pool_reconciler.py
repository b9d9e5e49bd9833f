"""The leader's pool reconciler: applies controller/pools.py's plans to the store, each write
guarded by the object's revision and the leader's fencing token. It runs inside the
scheduler's pass (the scheduler then places the VMs it created in its next pass) on the pools
the watch cache marked changed (a pool, or one of its VMs), and on every pool in a full pass.

Failover safety comes from names: a pool's VMs are POOL-INDEX, so a new leader that repeats
a half-done scale-up meets ALREADY_EXISTS instead of making a second VM; deletes and stops are
guarded by revisions and repeat harmlessly."""
from __future__ import annotations

import logging
import time
import uuid

from controller import instancetypes, lifecycle, pools
from controller.errors import RequestError
from corral import status as vm_status
from corral.logs import log_vm
from corral.resources import POOLS, VMS
from corral.store import AlreadyExists, Conflict, Fence, NotFound, Store, StoreError
from corral.v1 import pool_pb2, vm_pb2
from corral.validation import ValidationError

log = logging.getLogger(__name__)

#: New VMs per transaction: each is a comparison and two puts (the VM, its CreatedByPool event),
#: and etcd takes 128 of either by default (--max-txn-ops); and at most this many bytes of them
#: (etcd refuses a request past 1.5 MiB by default).
CREATE_BATCH = 40
CREATE_BATCH_BYTES = 512 * 1024


def resolve_spec(store: Store, vm: vm_pb2.VirtualMachine, *, dry_run: bool) -> None:
    """Fill the VM's spec from its instance type and preference, as CreateVirtualMachine does."""
    instancetypes.resolve(store, vm, dry_run=dry_run)


def resolved_template(store: Store, pool: pool_pb2.VirtualMachinePool) -> vm_pb2.VirtualMachineSpec:
    """The template's spec resolved against its instance type and preference (their revisions
    recorded), once per pass: resolution never touches disk paths, so each VM's spec is then
    this with its name put in (pools.named), without a store call per VM."""
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = pools.vm_name(pool.metadata.name, 0)
    vm.spec.CopyFrom(pool.spec.virtual_machine_template.spec)
    resolve_spec(store, vm, dry_run=False)
    return vm.spec


def make_vm(pool: pool_pb2.VirtualMachinePool, index: int, revision: str,
            template: vm_pb2.VirtualMachineSpec) -> vm_pb2.VirtualMachine:
    """A new pool VM as CreateVirtualMachine would store it: Pending, with a fresh uid."""
    vm = pools.new_vm(pool, index, revision)
    vm.spec.CopyFrom(pools.named(template, vm.metadata.name))
    vm.metadata.uid = str(uuid.uuid4())
    vm.metadata.create_time.CopyFrom(vm_status.now())
    vm_status.set_phase(vm, vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING)
    vm_status.record_event(vm, "CreatedByPool", f"created by pool {pool.metadata.name} (template {revision})")
    return vm


def _batches(vms: list[tuple[int, vm_pb2.VirtualMachine]]) -> list[list[tuple[int, vm_pb2.VirtualMachine]]]:
    """The new VMs in groups of at most CREATE_BATCH and CREATE_BATCH_BYTES (a lone VM past
    the bytes still goes, alone)."""
    groups: list[list[tuple[int, vm_pb2.VirtualMachine]]] = []
    size = 0
    for item in vms:
        item_size = item[1].ByteSize()
        if not groups or len(groups[-1]) == CREATE_BATCH or size + item_size > CREATE_BATCH_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item_size
    return groups


def delete_vm(store: Store, vm: vm_pb2.VirtualMachine, fence: Fence) -> None:
    """What DeleteVirtualMachine does: remove a VM that never reached a node, else mark it for
    deletion (its node stops the guest and releases it)."""
    if not vm.status.node_name:
        store.delete(VMS, vm.metadata.name, resource_version=vm.metadata.resource_version, fence=fence)
    elif not vm.metadata.HasField("delete_time"):
        vm.metadata.delete_time.CopyFrom(vm_status.now())
        store.update(VMS, vm, fence=fence)


class PoolReconciler:
    def __init__(self, *, store: Store) -> None:
        self.store = store

    def reconcile(self, fence: Fence, work: list[tuple[str, pool_pb2.VirtualMachinePool | None,
                                                       list[vm_pb2.VirtualMachine]]],
                  nodes: dict) -> None:
        """``work``: (pool name, the pool or None when it no longer exists, the VMs naming it as
        owner); ``nodes``: node records by name (for in-place rollouts' node selectors)."""
        now = time.time()
        for name, pool, vms in work:
            try:
                if pool is None:
                    self._collect_orphans(name, vms, fence)
                elif pool.metadata.HasField("delete_time"):
                    self._delete_pool(pool, [vm for vm in vms if pools.owned_by(vm, pool)], fence)
                else:
                    owned = [vm for vm in vms if pools.owned_by(vm, pool)]
                    self._collect_orphans(name, [vm for vm in vms if not pools.owned_by(vm, pool)], fence)
                    self._apply(pool, owned, now, nodes, fence)
            except (Conflict, NotFound):
                continue  # changed meanwhile: the cache marks the pool again and the next pass retries
            except StoreError:
                raise  # the store is unreachable, or this leader was deposed: the scheduler's to handle
            except Exception:  # noqa: BLE001 - one pool's surprise must not stop the leader's pass
                log.exception("pool %s: reconciling failed (retried in the next full pass)", name)

    def _collect_orphans(self, pool_name: str, vms: list[vm_pb2.VirtualMachine], fence: Fence) -> None:
        """VMs whose owning pool is gone (deleted, or replaced by another of the same name)."""
        for vm in vms:
            if vm.metadata.HasField("delete_time"):
                continue
            vm = _copy(vm)
            delete_vm(self.store, vm, fence)
            log_vm(log, vm, "vm %s deleted: its pool %s (uid %s) is gone", vm.metadata.name, pool_name,
                   vm.metadata.owner.uid)

    def _delete_pool(self, pool: pool_pb2.VirtualMachinePool, vms: list[vm_pb2.VirtualMachine],
                     fence: Fence) -> None:
        orphan = pool.metadata.annotations.get(ORPHAN_ANNOTATION) == "true"
        for vm in vms:
            vm = _copy(vm)
            if orphan:
                vm.metadata.ClearField("owner")
                vm.metadata.annotations.pop(pools.REVISION_ANNOTATION, None)
                vm.metadata.annotations.pop(pools.ROLLOUT_ANNOTATION, None)
                self.store.update(VMS, vm, fence=fence)
                log_vm(log, vm, "vm %s orphaned: pool %s deleted", vm.metadata.name, pool.metadata.name)
            elif not vm.metadata.HasField("delete_time"):
                delete_vm(self.store, vm, fence)
        if orphan or not vms:
            self.store.delete(POOLS, pool.metadata.name, resource_version=pool.metadata.resource_version,
                              fence=fence)
            log.info("pool %s deleted%s", pool.metadata.name, " (its VMs orphaned)" if orphan else "")

    def _apply(self, pool: pool_pb2.VirtualMachinePool, vms: list[vm_pb2.VirtualMachine], now: float,
               nodes: dict, fence: Fence) -> None:
        revision = pools.template_revision(pool)
        failures: list[str] = []

        def node_labels(name: str) -> dict | None:
            node = nodes.get(name)
            return dict(node.metadata.labels) if node is not None else None

        try:
            template = resolved_template(self.store, pool)
        except (ValidationError, RequestError) as exc:  # its template no longer resolves
            status = pool_pb2.VirtualMachinePoolStatus()
            status.CopyFrom(pool.status)
            pools.set_condition(status, "ReplicaFailure", True, "TemplateInvalid", str(exc))
            self._write_status(pool, status, fence)
            return

        def wanted_spec(name: str) -> vm_pb2.VirtualMachineSpec:
            return pools.named(template, name)

        plan = pools.plan(pool, vms, now_seconds=now, wanted_spec=wanted_spec, node_labels=node_labels)
        for vm in plan.delete:
            delete_vm(self.store, vm, fence)
            why = "replaced: its runs kept failing" if vm.metadata.name in plan.healed else "scaled in"
            log_vm(log, vm, "pool %s: vm %s %s", pool.metadata.name, vm.metadata.name, why)
        for vm in plan.park:
            vm.metadata.annotations[pools.PARKED_ANNOTATION] = "true"
            if not self._stopped(vm, failures):
                continue
            vm_status.record_event(vm, "ScaledIn", f"pool {pool.metadata.name} scaled in: stopped and kept "
                                                  "(state preservation Offline)")
            self.store.update(VMS, vm, fence=fence)
            log_vm(log, vm, "pool %s: vm %s scaled in, kept stopped", pool.metadata.name, vm.metadata.name)
        for vm in plan.revive:
            self._revive(pool, vm, revision, wanted_spec(vm.metadata.name), now, fence, failures)
        self._create(pool, plan.create, revision, template, fence, failures)
        for vm in plan.update:
            if vm.metadata.name in plan.restart and lifecycle.strategy(vm) != vm_pb2.RUN_STRATEGY_HALTED:
                try:
                    lifecycle.start(vm, now_seconds=now)  # the run the rollout stopped comes back
                except lifecycle.Refused as exc:
                    failures.append(str(exc))
            self.store.update(VMS, vm, fence=fence)
            log_vm(log, vm, "pool %s: vm %s updated to template %s", pool.metadata.name, vm.metadata.name, revision)
        for vm in plan.stop:
            if not self._stopped(vm, failures):
                continue
            vm_status.record_event(vm, "RollingOut", f"stopped by pool {pool.metadata.name} to apply template "
                                                     f"{revision}")
            self.store.update(VMS, vm, fence=fence)
            log_vm(log, vm, "pool %s: stopping vm %s to apply template %s", pool.metadata.name,
                   vm.metadata.name, revision)
        status = plan.status
        if failures:
            pools.set_condition(status, "ReplicaFailure", True, "CreateFailed", failures[0])
        self._write_status(pool, status, fence)

    def _create(self, pool: pool_pb2.VirtualMachinePool, indexes: list[int], revision: str,
                template: vm_pb2.VirtualMachineSpec, fence: Fence, failures: list[str]) -> None:
        """The plan's new VMs, several to a transaction (a pool scaled to thousands costs tens
        of writes, not thousands); a batch that meets a name taken is made one by one."""
        for chunk in _batches([(index, make_vm(pool, index, revision, template)) for index in indexes]):
            made = self.store.create_all(VMS, [vm for _, vm in chunk], fence=fence)
            for vm in made or ():
                log_vm(log, vm, "pool %s: created vm %s", pool.metadata.name, vm.metadata.name)
            if made is None:
                for index, _ in chunk:
                    self._create_one(pool, index, revision, template, fence, failures)

    def _create_one(self, pool: pool_pb2.VirtualMachinePool, index: int, revision: str,
                    template: vm_pb2.VirtualMachineSpec, fence: Fence, failures: list[str]) -> None:
        try:
            vm = self.store.create(VMS, make_vm(pool, index, revision, template), fence=fence)
            log_vm(log, vm, "pool %s: created vm %s", pool.metadata.name, vm.metadata.name)
        except AlreadyExists:
            # Ours but not in the cache yet (the next pass sees it), or a VM someone made
            # under the pool's name: reported, never adopted or deleted.
            name = pools.vm_name(pool.metadata.name, index)
            try:
                other = self.store.get(VMS, name)
            except NotFound:
                return
            if not pools.owned_by(other, pool):
                failures.append(f"VirtualMachine {name} exists and is not the pool's: delete or rename it "
                                f"so the pool can make its VM {index}")

    @staticmethod
    def _stopped(vm: vm_pb2.VirtualMachine, failures: list[str]) -> bool:
        """Ask the VM's run to stop; False (reported) when it cannot now, for example while it
        is being saved: the next pass tries again."""
        try:
            lifecycle.stop(vm, grace_period_seconds=None, force=False)
            return True
        except lifecycle.Refused as exc:
            failures.append(str(exc))
            return False

    def _revive(self, pool: pool_pb2.VirtualMachinePool, vm: vm_pb2.VirtualMachine, revision: str,
                wanted: vm_pb2.VirtualMachineSpec, now: float, fence: Fence, failures: list[str]) -> None:
        """A parked VM the pool needs again: the current template (it has no run), then a new run."""
        if vm.metadata.annotations.get(pools.REVISION_ANNOTATION) != revision:
            pools.set_template_metadata(vm, pool, revision)
            vm.spec.CopyFrom(wanted)
        else:
            vm.metadata.annotations.pop(pools.PARKED_ANNOTATION, None)
            vm.spec.run_strategy = wanted.run_strategy  # the scale-in's stop made it Halted
        try:
            lifecycle.start(vm, now_seconds=now)
        except lifecycle.Refused as exc:
            failures.append(str(exc))
            return
        self.store.update(VMS, vm, fence=fence)
        log_vm(log, vm, "pool %s: vm %s scaled out again", pool.metadata.name, vm.metadata.name)

    def _write_status(self, pool: pool_pb2.VirtualMachinePool, status: pool_pb2.VirtualMachinePoolStatus,
                      fence: Fence) -> None:
        # Compared without observed_resource_version: a status write moves the pool's revision,
        # and must not by itself call for another write.
        status.observed_resource_version = pool.status.observed_resource_version
        if status != pool.status:
            updated = pool_pb2.VirtualMachinePool()
            updated.CopyFrom(pool)
            updated.status.CopyFrom(status)
            updated.status.observed_resource_version = pool.metadata.resource_version
            self.store.update(POOLS, updated, fence=fence)


#: A pool deleted with orphan=true: its VMs stay, without owner.
ORPHAN_ANNOTATION = "corral.dev/delete-orphan"

def _copy(vm: vm_pb2.VirtualMachine) -> vm_pb2.VirtualMachine:
    copy = vm_pb2.VirtualMachine()
    copy.CopyFrom(vm)
    return copy
