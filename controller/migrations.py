"""Live migrations: what the leader decides (admission under the parallel limits, the target
node, the policy in force, node loss) and how nodes' reports move a migration on.

The VM carries the migration to the nodes (`status.migration_target`): the target node sees
it in its assignment stream and prepares an incoming launcher, the source node starts the
libvirt job once the target is ready and aborts it on `cancel_requested`. The run keeps its
instance uid across the move (as KubeVirt's VMI does): the domain's uuid does not change.

Who ends a migration: the source node's report (it alone knows whether libvirt finished the
job), or the leader when the source node is lost, the VM's run ended, or the target never got
ready. Never the API: a cancel only asks the source to abort, because a job that completes
anyway must still switch the VM to its target."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
import time
import uuid

from corral import scheduling, status as vm_status
from corral.logs import log_vm
from corral.resources import MIGRATIONS, VMS
from corral.store import Conflict, Fence, NotFound, Store
from corral.v1 import migration_pb2, vm_pb2

log = logging.getLogger(__name__)
M = migration_pb2

ACTIVE_PHASES = frozenset({M.MIGRATION_PHASE_SCHEDULING, M.MIGRATION_PHASE_SCHEDULED,
                           M.MIGRATION_PHASE_PREPARING_TARGET, M.MIGRATION_PHASE_TARGET_READY,
                           M.MIGRATION_PHASE_RUNNING})
FINAL_PHASES = frozenset({M.MIGRATION_PHASE_SUCCEEDED, M.MIGRATION_PHASE_FAILED})
#: A target that is not ready after this long fails the migration (its launcher cannot start).
TARGET_READY_TIMEOUT_SECONDS = 120.0
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class MigrationSettings:
    """The cluster's migration settings (KubeVirt's defaults)."""

    per_cluster: int = 5
    outbound_per_node: int = 2
    bandwidth_mib_per_second: int = 0
    completion_timeout_per_gib_seconds: int = 150
    progress_timeout_seconds: int = 150
    allow_post_copy: bool = False
    allow_auto_converge: bool = False

    @classmethod
    def from_settings(cls, settings) -> "MigrationSettings":
        return cls(per_cluster=settings.parallel_migrations_per_cluster,
                   outbound_per_node=settings.parallel_outbound_migrations_per_node,
                   bandwidth_mib_per_second=settings.migration_bandwidth_mib_per_second,
                   completion_timeout_per_gib_seconds=settings.migration_completion_timeout_per_gib_seconds,
                   progress_timeout_seconds=settings.migration_progress_timeout_seconds,
                   allow_post_copy=settings.migration_allow_post_copy,
                   allow_auto_converge=settings.migration_allow_auto_converge)


def phase_name(phase: int) -> str:
    """MIGRATION_PHASE_TARGET_READY -> TargetReady."""
    name = M.MigrationPhase.Name(phase).removeprefix("MIGRATION_PHASE_")
    return "".join(part.title() for part in name.split("_"))


def set_phase(migration: migration_pb2.Migration, phase: int) -> bool:
    if migration.status.phase == phase:
        return False
    migration.status.phase = phase
    migration.status.phase_transitions.add(phase=phase, time=vm_status.now())
    if phase in FINAL_PHASES:
        migration.status.end_time.CopyFrom(vm_status.now())
    return True


def fail(migration: migration_pb2.Migration, reason: str, message: str) -> None:
    migration.status.reason = reason
    migration.status.message = message
    set_phase(migration, M.MIGRATION_PHASE_FAILED)


def resolve_target(vm: vm_pb2.VirtualMachine, migration: migration_pb2.Migration, node: str,
                   defaults: MigrationSettings) -> vm_pb2.MigrationTarget:
    """The migration as the nodes see it: target, run, and the policy in force."""
    policy = migration.spec.policy

    def pick(field: str, default):
        return getattr(policy, field) if policy.HasField(field) else default

    per_gib = pick("completion_timeout_per_gib_seconds", defaults.completion_timeout_per_gib_seconds)
    gib = max(vm.spec.memory_mib / 1024, 1.0 / 16)
    return vm_pb2.MigrationTarget(
        migration_name=migration.metadata.name, node_name=node, instance_uid=vm.status.instance_uid,
        bandwidth_mib_per_second=pick("bandwidth_mib_per_second", defaults.bandwidth_mib_per_second),
        completion_timeout_seconds=max(int(per_gib * gib), 1),
        progress_timeout_seconds=pick("progress_timeout_seconds", defaults.progress_timeout_seconds),
        allow_post_copy=pick("allow_post_copy", defaults.allow_post_copy),
        allow_auto_converge=pick("allow_auto_converge", defaults.allow_auto_converge))


def post_copy_refusal(target: vm_pb2.MigrationTarget, source: str,
                      views: dict[str, scheduling.NodeView]) -> str:
    """Why a migration whose policy allows post-copy runs pre-copy only (empty: it may switch).
    The target's QEMU needs userfaultfd, and neither node may tunnel the stream: each node's
    handler says at start what it can (NodeStatus.post_copy_ready)."""
    if not target.allow_post_copy:
        return ""
    for role, name in (("target", target.node_name), ("source", source)):
        view = views.get(name)
        problem = view.post_copy_problem if view is not None else "the node is not registered"
        if problem:
            return f"post-copy off, pre-copy only: {role} node {name}: {problem}"
    return ""


def choose_target(vm: vm_pb2.VirtualMachine, migration: migration_pb2.Migration,
                  views: dict[str, scheduling.NodeView]) -> tuple[str | None, str]:
    """The target node and "", or None and why none fits."""
    source = vm.status.node_name
    wanted = migration.spec.target_node
    if wanted:
        if wanted == source:
            return None, f"VirtualMachine {vm.metadata.name!r} already runs on node {wanted!r}"
        view = views.get(wanted)
        if view is None:
            return None, f"node {wanted!r} is not registered"
        why = scheduling.misfit(view, vm.spec)
        return (wanted, "") if why is None else (None, f"node {wanted!r}: {why}")
    others = {name: view for name, view in views.items() if name != source}
    if not others:
        return None, f"no node other than {source} is registered"
    chosen, why = scheduling.choose_node(vm.spec, others)
    return chosen, why.replace(" nodes are available", " other nodes are available")


def admitted(migration: migration_pb2.Migration, vm: vm_pb2.VirtualMachine,
             active: list[migration_pb2.Migration], limits: MigrationSettings) -> str:
    """"" when the migration may start now, else why it waits (the parallel limits)."""
    if len(active) >= limits.per_cluster:
        return f"{len(active)} migrations are running (at most {limits.per_cluster} per cluster)"
    outbound = sum(1 for other in active if other.status.source_node == vm.status.node_name)
    if outbound >= limits.outbound_per_node:
        return (f"{outbound} migrations are leaving node {vm.status.node_name} "
                f"(at most {limits.outbound_per_node} per node)")
    return ""


def clear_target(vm: vm_pb2.VirtualMachine, reason: str, message: str, *, warning: bool) -> None:
    vm.status.ClearField("migration_target")
    vm_status.set_condition(vm, "Migrating", False, reason, message)
    vm_status.record_event(vm, reason, message, warning=warning)


class MigrationReconciler:
    """The leader's pass over migrations, run after the scheduler's pass."""

    def __init__(self, *, store: Store, settings: MigrationSettings) -> None:
        self.store = store
        self.settings = settings

    def reconcile(self, fence: Fence, migrations: list[migration_pb2.Migration],
                  vm_named: Callable[[str], vm_pb2.VirtualMachine | None],
                  views: dict[str, scheduling.NodeView], lost: set[str]) -> None:
        """``migrations`` and the VMs ``vm_named`` returns are the watch cache's: copied before a change."""
        active = [m for m in migrations if m.status.phase in ACTIVE_PHASES]
        for migration in sorted(migrations, key=lambda m: (m.metadata.create_time.ToNanoseconds(), m.metadata.name)):
            if migration.status.phase in FINAL_PHASES:
                continue
            copied = migration_pb2.Migration()
            copied.CopyFrom(migration)
            migration = copied
            vm = vm_named(migration.spec.vm_name)
            if vm is not None:
                copy = vm_pb2.VirtualMachine()
                copy.CopyFrom(vm)
                vm = copy
            try:
                self._reconcile_one(migration, vm, fence, views, lost, active)
            except (Conflict, NotFound):
                continue  # changed meanwhile: the next pass sees it

    def _reconcile_one(self, migration, vm, fence, views, lost, active) -> None:
        name = migration.metadata.name
        if vm is None or vm.metadata.HasField("delete_time"):
            fail(migration, "VirtualMachineGone", f"VirtualMachine {migration.spec.vm_name!r} was deleted")
            self.store.update(MIGRATIONS, migration, fence=fence)
            return
        if migration.status.phase in (M.MIGRATION_PHASE_UNSPECIFIED, M.MIGRATION_PHASE_PENDING):
            self._admit(migration, vm, fence, views, active)
            return
        target = vm.status.migration_target
        mine = target.migration_name == name
        if migration.status.source_node in lost:
            fail(migration, "SourceNodeLost", f"source node {migration.status.source_node} was lost")
        elif vm.status.instance_uid != migration.status.source_instance_uid or vm.status.phase not in vm_status.LIVE_PHASES:
            fail(migration, "RunEnded", f"run {migration.status.source_instance_uid} of VirtualMachine "
                                        f"{vm.metadata.name!r} ended during the migration")
        elif not mine:
            fail(migration, "Superseded", "the VM no longer carries this migration")
        elif target.node_name in lost and not target.cancel_requested:
            target.cancel_requested = True  # the source aborts and reports the failure
            target.cancel_reason = "TargetNodeLost"
            target.cancel_message = f"target node {target.node_name} was lost: aborting"
            vm_status.record_event(vm, "MigrationTargetLost", target.cancel_message, warning=True)
            self.store.update(VMS, vm, fence=fence)
            return
        elif (migration.status.phase == M.MIGRATION_PHASE_PREPARING_TARGET
              and time.time() - migration.status.start_time.ToSeconds() > TARGET_READY_TIMEOUT_SECONDS):
            fail(migration, "TargetNotReady", f"the target node {target.node_name} did not get ready "
                                              f"within {TARGET_READY_TIMEOUT_SECONDS:.0f}s")
        elif migration.status.cancel_requested and not target.cancel_requested:
            target.cancel_requested = True
            self.store.update(VMS, vm, fence=fence)
            return
        else:
            return
        if mine:
            clear_target(vm, "MigrationFailed", f"migration {name}: {migration.status.message}", warning=True)
            self.store.update(VMS, vm, fence=fence)
        self.store.update(MIGRATIONS, migration, fence=fence)
        log_vm(log, vm, "migration %s failed: %s", name, migration.status.message)

    def _admit(self, migration, vm, fence, views, active) -> None:
        name = migration.metadata.name
        if vm.status.phase != vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING or vm_status.run_request_applies(vm):
            fail(migration, "VirtualMachineNotRunning",
                 f"VirtualMachine {vm.metadata.name!r} is {vm_status.printable_status(vm)}, not Running")
            self.store.update(MIGRATIONS, migration, fence=fence)
            return
        if vm.status.migration_target.migration_name:
            return  # another migration of this VM is in progress: wait for it
        why_not = not_migratable(vm)
        if why_not:
            fail(migration, "NotMigratable", why_not)
            self.store.update(MIGRATIONS, migration, fence=fence)
            return
        waits = admitted(migration, vm, active, self.settings)
        if waits:
            if migration.status.message != waits:
                migration.status.message = waits
                set_phase(migration, M.MIGRATION_PHASE_PENDING)
                self.store.update(MIGRATIONS, migration, fence=fence)
            return
        set_phase(migration, M.MIGRATION_PHASE_SCHEDULING)
        node, why = choose_target(vm, migration, views)
        if node is None:
            fail(migration, "TargetUnschedulable", why)
            self.store.update(MIGRATIONS, migration, fence=fence)
            log_vm(log, vm, "migration %s: no target: %s", name, why)
            return
        vm.status.migration_target.CopyFrom(resolve_target(vm, migration, node, self.settings))
        no_post_copy = post_copy_refusal(vm.status.migration_target, vm.status.node_name, views)
        if no_post_copy:  # the policy's post-copy cannot run between these nodes: pre-copy, said so
            vm.status.migration_target.allow_post_copy = False
            vm_status.record_event(vm, "PostCopyUnavailable", f"migration {name}: {no_post_copy}", warning=True)
        vm_status.set_condition(vm, "Migrating", True, "Migrating", f"moving to node {node} ({name})")
        vm_status.record_event(vm, "Migrating", f"migration {name}: moving from node {vm.status.node_name} to {node}")
        self.store.update(VMS, vm, fence=fence)
        status = migration.status
        status.source_node, status.target_node = vm.status.node_name, node
        status.source_instance_uid = status.target_instance_uid = vm.status.instance_uid
        status.start_time.CopyFrom(vm_status.now())
        status.message = ""
        status.post_copy_message = no_post_copy
        set_phase(migration, M.MIGRATION_PHASE_SCHEDULED)
        set_phase(migration, M.MIGRATION_PHASE_PREPARING_TARGET)
        self.store.update(MIGRATIONS, migration, fence=fence)
        scheduling.add_to(views, node, vm.spec)
        active.append(migration)
        log_vm(log, vm, "migration %s: vm %s from %s to %s", name, vm.metadata.name, status.source_node, node)


def not_migratable(vm: vm_pb2.VirtualMachine) -> str:
    """Why the VM cannot be live-migrated ("" when it can): a writable ephemeral disk lives in
    its run's directory on the source node, and its writes would not follow the guest."""
    for disk in vm.spec.disks:
        if disk.WhichOneof("source") == "ephemeral" and not disk.read_only:
            return (f"disk {disk.name!r} is a writable ephemeral disk: its contents stay on node "
                    f"{vm.status.node_name} (use a persistent disk on shared storage to migrate)")
    if vm.status.current_vcpus or vm.status.current_memory_mib:
        # The target's domain is built from the spec, whose vCPUs and memory are now all boot
        # vCPUs and memory, while the source's were plugged: libvirt would refuse the pair.
        return ("its vCPUs or memory were changed while it runs (hotplug): restart it before "
                "migrating, so that its domain is built from its spec")
    return ""


def new_name(vm_name: str) -> str:
    """A migration name made from the VM's: at most 63 characters, DNS-1123."""
    return f"{vm_name[:50]}-{uuid.uuid4().hex[:8]}"


def progress_message(status: migration_pb2.MigrationStatus) -> str:
    if not status.data_total_bytes:
        return ""
    return (f"{status.data_processed_bytes / MIB:.0f} MiB moved, "
            f"{status.data_remaining_bytes / MIB:.0f} MiB left of {status.data_total_bytes / MIB:.0f} MiB")
