"""Migration decisions on messages alone: limits, target choice, policy, reports, drain plans."""
from __future__ import annotations

import pytest

from controller import migrations
from controller.handler_api import apply_migration_report
from corral import drain, scheduling
from corral.v1 import handler_pb2, migration_pb2, node_pb2, vm_pb2

M = migration_pb2


def running_vm(name: str = "pet", node: str = "n1", memory_mib: int = 2048) -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name, vm.metadata.uid = name, f"uid-{name}"
    vm.spec.vcpus, vm.spec.memory_mib = 1, memory_mib
    vm.status.phase = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
    vm.status.node_name, vm.status.instance_uid = node, f"run-{name}"
    return vm


def node(name: str, *, cordoned: bool = False) -> node_pb2.Node:
    made = node_pb2.Node()
    made.metadata.name = name
    made.spec.unschedulable = cordoned
    made.status.capacity.vcpus, made.status.capacity.memory_mib = 4, 4096
    return made


def migration_of(vm_name: str = "pet", *, source: str = "n1", phase: int = M.MIGRATION_PHASE_RUNNING,
                 target: str = "") -> migration_pb2.Migration:
    made = M.Migration()
    made.metadata.name = f"{vm_name}-m"
    made.spec.vm_name, made.spec.target_node = vm_name, target
    made.status.phase, made.status.source_node = phase, source
    return made


def test_parallel_limits_per_cluster_and_per_source_node():
    limits = migrations.MigrationSettings()
    assert limits.per_cluster == 5 and limits.outbound_per_node == 2  # KubeVirt's defaults
    vm = running_vm(node="n1")
    two_from_n1 = [migration_of(f"v{i}", source="n1") for i in range(2)]
    assert "per node" in migrations.admitted(migration_of(), vm, two_from_n1, limits)
    assert migrations.admitted(migration_of(), running_vm(node="n2"), two_from_n1, limits) == ""
    five = [migration_of(f"v{i}", source=f"n{i + 3}") for i in range(5)]
    assert "per cluster" in migrations.admitted(migration_of(), vm, five, limits)


def test_the_target_fits_and_is_never_the_source_nor_cordoned():
    vm = running_vm()
    views = scheduling.build_views([node("n1"), node("n2"), node("n3", cordoned=True)], {"n1", "n2", "n3"}, [vm])
    assert migrations.choose_target(vm, migration_of(), views) == ("n2", "")
    chosen, why = migrations.choose_target(vm, migration_of(target="n3"), views)
    assert chosen is None and "unschedulable" in why
    chosen, why = migrations.choose_target(vm, migration_of(target="n1"), views)
    assert chosen is None and "already runs" in why
    big = running_vm("big", memory_mib=4096)
    views = scheduling.build_views([node("n1"), node("n2")], {"n1", "n2"}, [big, running_vm("other", node="n2")])
    chosen, why = migrations.choose_target(big, migration_of("big"), views)
    assert chosen is None and "Insufficient memory" in why


def test_a_migrating_vm_holds_room_on_its_target():
    vm = running_vm()
    vm.status.migration_target.node_name = "n2"
    views = scheduling.build_views([node("n1"), node("n2")], {"n1", "n2"}, [vm])
    assert views["n1"].allocated_memory_mib == views["n2"].allocated_memory_mib == 2048


def test_policy_resolves_overrides_over_cluster_defaults():
    vm = running_vm(memory_mib=2048)
    migration = migration_of()
    migration.spec.policy.bandwidth_mib_per_second = 64
    migration.spec.policy.allow_post_copy = True
    target = migrations.resolve_target(vm, migration, "n2", migrations.MigrationSettings())
    assert (target.bandwidth_mib_per_second, target.allow_post_copy) == (64, True)
    assert target.completion_timeout_seconds == 300 and target.progress_timeout_seconds == 150
    assert target.instance_uid == vm.status.instance_uid  # the run continues on the target


def report(phase: int, role=handler_pb2.MIGRATION_ROLE_SOURCE, **fields):
    return handler_pb2.ReportMigrationStatusRequest(phase=phase, role=role, **fields)


def migrating_pair():
    vm = running_vm()
    migration = migration_of(phase=M.MIGRATION_PHASE_PREPARING_TARGET)
    vm.status.migration_target.CopyFrom(vm_pb2.MigrationTarget(migration_name=migration.metadata.name, node_name="n2",
                                                               instance_uid=vm.status.instance_uid))
    return vm, migration


def test_reports_move_a_migration_to_success_and_switch_the_vm():
    vm, migration = migrating_pair()
    ready = report(M.MIGRATION_PHASE_TARGET_READY, handler_pb2.MIGRATION_ROLE_TARGET, target_address="10.0.0.2:7300",
                   target_domain_xml="<domain/>")
    assert apply_migration_report(vm, migration, ready) == (True, True)
    assert apply_migration_report(vm, migration, ready) == (False, False)  # repeated: nothing new
    assert vm.status.migration_target.target_address == "10.0.0.2:7300"
    progress = report(M.MIGRATION_PHASE_RUNNING, data_total_bytes=100 << 20, data_processed_bytes=40 << 20,
                      data_remaining_bytes=60 << 20)
    assert apply_migration_report(vm, migration, progress) == (False, True)
    assert migration.status.phase == M.MIGRATION_PHASE_RUNNING and "40 MiB moved" in migration.status.message
    done = report(M.MIGRATION_PHASE_SUCCEEDED, downtime_ms=42)
    assert apply_migration_report(vm, migration, done) == (True, True)
    assert vm.status.node_name == "n2" and not vm.status.HasField("migration_target")
    assert vm.status.instance_uid == "run-pet" and migration.status.downtime_ms == 42
    assert apply_migration_report(vm, migration, report(M.MIGRATION_PHASE_FAILED)) == (False, False)  # final


def test_a_failing_target_asks_the_source_to_abort_and_the_source_ends_it():
    vm, migration = migrating_pair()
    failed_target = report(M.MIGRATION_PHASE_FAILED, handler_pb2.MIGRATION_ROLE_TARGET, message="launcher died")
    assert apply_migration_report(vm, migration, failed_target) == (True, True)
    assert vm.status.migration_target.cancel_requested and migration.status.phase != M.MIGRATION_PHASE_FAILED
    aborted = report(M.MIGRATION_PHASE_FAILED, reason="TargetFailed", message="the target went away")
    apply_migration_report(vm, migration, aborted)
    assert migration.status.phase == M.MIGRATION_PHASE_FAILED and migration.status.reason == "TargetFailed"
    assert vm.status.node_name == "n1" and not vm.status.HasField("migration_target")


@pytest.mark.parametrize("strategy,action", [
    (vm_pb2.EVICTION_STRATEGY_UNSPECIFIED, drain.MIGRATE_OR_STOP),
    (vm_pb2.EVICTION_STRATEGY_LIVE_MIGRATE_IF_POSSIBLE, drain.MIGRATE_OR_STOP),
    (vm_pb2.EVICTION_STRATEGY_LIVE_MIGRATE, drain.MIGRATE),
    (vm_pb2.EVICTION_STRATEGY_NONE, drain.STOP),
    (vm_pb2.EVICTION_STRATEGY_EXTERNAL, drain.WAIT),
])
def test_drain_plans_follow_the_eviction_strategy(strategy, action):
    vm = running_vm()
    vm.spec.eviction_strategy = strategy
    assert drain.plan(vm) == action
    assert drain.on_node(vm, "n1") and not drain.on_node(vm, "n2")


def test_a_writable_ephemeral_disk_is_not_migratable():
    vm = running_vm()
    assert migrations.not_migratable(vm) == ""
    disk = vm.spec.disks.add(name="scratch")
    disk.ephemeral.base_image_path = "/var/lib/corral/images/base.qcow2"
    assert "writable ephemeral" in migrations.not_migratable(vm)
    disk.read_only = True
    assert migrations.not_migratable(vm) == ""



def test_a_run_resized_live_is_not_migratable_until_restarted():
    """After a live vCPU or memory hotplug the spec says what is plugged, which the target
    would boot with: the domains would differ, so the migration is refused with the way out."""
    vm = running_vm()
    vm.spec.max_vcpus, vm.spec.vcpus = 4, 2
    assert migrations.not_migratable(vm) == ""
    vm.status.current_vcpus = 2
    assert "restart it before migrating" in migrations.not_migratable(vm)
    vm.status.ClearField("current_vcpus")
    vm.status.current_memory_mib = 384
    assert "hotplug" in migrations.not_migratable(vm)

def test_the_second_success_report_adds_the_downtime_to_the_message():
    vm, migration = migrating_pair()
    migration.status.target_node = "n2"
    apply_migration_report(vm, migration, report(M.MIGRATION_PHASE_SUCCEEDED))
    assert "downtime 0 ms" in migration.status.message
    late = report(M.MIGRATION_PHASE_SUCCEEDED, handler_pb2.MIGRATION_ROLE_TARGET, downtime_ms=77)
    assert apply_migration_report(vm, migration, late) == (False, True)
    assert migration.status.downtime_ms == 77 and "downtime 77 ms" in migration.status.message
