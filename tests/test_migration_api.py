"""The Migration API and cordon on a real controller and handler: what is refused and with which
code, what the leader does with a migration that cannot start, and the watch. (Real
migrations between two nodes: tests/test_migration.py.)"""
from __future__ import annotations

import threading

import grpc
import pytest

from corral.cli import main as corral
from corral.v1 import meta_pb2, migration_pb2, migration_pb2_grpc, node_pb2, vm_pb2
from tests.cluster import wait_for

M = migration_pb2


def create(stub, vm_name: str, target: str = "", name: str = "") -> migration_pb2.Migration:
    migration = M.Migration(spec=M.MigrationSpec(vm_name=vm_name, target_node=target))
    migration.metadata.name = name
    return stub.CreateMigration(M.CreateMigrationRequest(migration=migration), timeout=10).migration


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def test_migrations_refused_or_failed_with_reasons_and_watched(cluster, capsys):
    cluster.start_controller()
    cluster.start_handler("n1")
    stub = migration_pb2_grpc.MigrationServiceStub(cluster.channel())
    big = cluster.guest_vm("waiting", memory_mib=10**6)  # never fits: stays Pending
    cluster.create(big)
    assert code_of(lambda: create(stub, "nope")) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: create(stub, "waiting")) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: create(stub, "Bad_Name")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: stub.GetMigration(M.GetMigrationRequest(name="nope"), timeout=5)) == grpc.StatusCode.NOT_FOUND

    events: list[migration_pb2.WatchMigrationsResponse] = []
    watch = stub.WatchMigrations(M.WatchMigrationsRequest())

    def follow() -> None:
        try:
            events.extend(watch)
        except grpc.RpcError:
            pass  # cancelled at the end

    threading.Thread(target=follow, daemon=True).start()

    cluster.create(cluster.guest_vm("pet"))
    vm = cluster.wait_phase("pet", vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING, timeout=90)
    assert code_of(lambda: create(stub, "pet", target="n1")) == grpc.StatusCode.FAILED_PRECONDITION  # its own node
    made = create(stub, "pet", name="pet-away")  # no other node: the leader fails it with the reason
    assert made.status.phase == M.MIGRATION_PHASE_PENDING and made.metadata.labels["corral.dev/vm"] == "pet"
    failed = wait_for(lambda: (m := stub.GetMigration(M.GetMigrationRequest(name="pet-away"), timeout=5).migration)
                      .status.phase == M.MIGRATION_PHASE_FAILED and m, timeout=30, what="the migration to fail")
    assert failed.status.reason == "TargetUnschedulable" and "no node other than n1" in failed.status.message
    after = cluster.get("pet")
    assert after.status.node_name == "n1" and after.status.instance_uid == vm.status.instance_uid
    assert not after.status.HasField("migration_target")
    assert code_of(lambda: stub.CancelMigration(M.CancelMigrationRequest(name="pet-away"), timeout=5)) \
        == grpc.StatusCode.FAILED_PRECONDITION  # already over
    wait_for(lambda: any(e.type == meta_pb2.WATCH_EVENT_TYPE_MODIFIED and e.migration.status.phase == M.MIGRATION_PHASE_FAILED
                         for e in events), timeout=10, what="the watch to see the failure")
    watch.cancel()
    listed = stub.ListMigrations(M.ListMigrationsRequest(vm_name="pet"), timeout=5).migrations
    assert [m.metadata.name for m in listed] == ["pet-away"]

    # Cordon through the CLI: the node is marked and new VMs wait.
    server = ["--server", cluster.servers]
    assert corral([*server, "cordon", "n1"]) == 0
    node = cluster.nodes.GetNode(node_pb2.GetNodeRequest(name="n1"), timeout=5).node
    assert node.spec.unschedulable
    cluster.create(cluster.guest_vm("late"))
    wait_for(lambda: cluster.get("late").status.printable_status == "ErrorUnschedulable", timeout=20,
             what="the new VM to wait for a schedulable node")
    capsys.readouterr()
    assert corral([*server, "get", "migrations"]) == 0
    assert "pet-away" in capsys.readouterr().out
    assert corral([*server, "uncordon", "n1"]) == 0
    cluster.wait_phase("late", vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING, timeout=90)
    assert corral([*server, "cordon", "nope"]) == 1
