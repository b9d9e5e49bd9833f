"""BatchCreateVirtualMachines on a real controller and etcd: all or none, one revision for the
batch, refusals that name the entry at fault and change nothing; the VMs then run on
SIMULATED nodes (corral-simnodes: the real handler protocol, libvirt's test driver)."""
from __future__ import annotations

import grpc
import pytest

from corral.client import Client
from corral.resources import REVISIONS
from corral.store import Store
from corral.v1 import instancetype_pb2 as it_pb2, instancetype_pb2_grpc as it_grpc, node_pb2, vm_pb2
from tests.cluster import simulated_nodes, simulated_vm, wait_for

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING


def batch(cluster, vms: list[vm_pb2.VirtualMachine]) -> list[vm_pb2.VirtualMachine]:
    request = vm_pb2.BatchCreateVirtualMachinesRequest(
        requests=[vm_pb2.CreateVirtualMachineRequest(virtual_machine=vm) for vm in vms])
    return list(cluster.vms.BatchCreateVirtualMachines(request, timeout=20).virtual_machines)


def refused(cluster, vms: list[vm_pb2.VirtualMachine]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        batch(cluster, vms)
    return caught.value


def fleet(prefix: str, count: int) -> list[vm_pb2.VirtualMachine]:
    return [simulated_vm(f"{prefix}-{index:03d}", label=("fleet", prefix), memory_mib=64) for index in range(count)]


def names_in_store(cluster) -> set[str]:
    return {vm.metadata.name for vm in cluster.vms.ListVirtualMachines(
        vm_pb2.ListVirtualMachinesRequest(page_size=1000), timeout=10).virtual_machines}


def test_a_batch_is_created_in_one_revision_and_runs(cluster):
    cluster.start_controller()
    log_path = cluster.base / "simnodes.log"
    with simulated_nodes(cluster, 4, log_path):
        wait_for(lambda: len(cluster.nodes.ListNodes(node_pb2.ListNodesRequest(), timeout=10).nodes) == 4,
                 timeout=60, what="4 simulated nodes")
        store = Store(endpoints=[cluster.etcd.endpoint], prefix=cluster.prefix)
        before = store.revision()
        with Client(cluster.servers) as client:  # the client library's call
            created = client.create_vms(fleet("cattle", 100))
        assert [vm.metadata.name for vm in created] == [f"cattle-{index:03d}" for index in range(100)]
        revisions = {vm.metadata.resource_version for vm in created}
        assert len(revisions) == 1 and revisions.pop() > before, "a batch is one transaction"
        assert len({vm.metadata.uid for vm in created}) == 100 and all(vm.metadata.uid for vm in created)
        assert all(vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING for vm in created)

        def all_running():
            vms = cluster.vms.ListVirtualMachines(vm_pb2.ListVirtualMachinesRequest(
                page_size=1000, label_selector="fleet=cattle"), timeout=10).virtual_machines
            return len(vms) == 100 and all(vm.status.phase == RUNNING for vm in vms) and vms
        vms = wait_for(all_running, timeout=90, interval=0.5, what="the batch's 100 VMs Running")
        assert {vm.status.node_name for vm in vms} == {f"sim-{index:05d}" for index in range(4)}


def test_a_refused_batch_creates_nothing_and_names_the_entry(cluster):
    cluster.start_controller()
    cluster.create(simulated_vm("taken", label=("fleet", "x"), memory_mib=64))
    before = names_in_store(cluster)

    vms = fleet("pets", 5)
    vms[3].metadata.name = "taken"
    error = refused(cluster, vms)
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "requests[3]" in error.details() and "'taken' already exists" in error.details()
    assert "nothing was created" in error.details()

    vms = fleet("pets", 5)
    vms[4].metadata.name = vms[1].metadata.name
    error = refused(cluster, vms)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests[4]" in error.details() and "requests[1]" in error.details()

    vms = fleet("pets", 5)
    vms[2].spec.vcpus = 0
    error = refused(cluster, vms)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "requests[2]: " in error.details()

    vms = fleet("pets", 5)
    vms[0].spec.instance_type.name = "no-such-type"
    error = refused(cluster, vms)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "requests[0]: " in error.details()

    # Entry 0 names a real instance type (a create records its revision), entry 1 is invalid:
    # refused, and no revision was written either.
    small = it_pb2.InstanceType(spec=it_pb2.InstanceTypeSpec(vcpus=1, memory_mib=64))
    small.metadata.name = "tiny"
    it_grpc.InstanceTypeServiceStub(cluster.channel()).CreateInstanceType(
        it_pb2.CreateInstanceTypeRequest(instance_type=small), timeout=10)
    vms = fleet("sized", 2)
    vms[0].spec.ClearField("vcpus")
    vms[0].spec.ClearField("memory_mib")
    vms[0].spec.instance_type.name = "tiny"
    vms[1].spec.vcpus = 0
    error = refused(cluster, vms)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "requests[1]: " in error.details()
    store = Store(endpoints=[cluster.etcd.endpoint], prefix=cluster.prefix)
    assert store.list_all(REVISIONS)[0] == [], "a refused batch recorded an instance type revision"
    vms[1].CopyFrom(vms[0])
    vms[1].metadata.name = "sized-001"
    batch(cluster, vms)  # two entries of that type: fine, and its revision recorded once
    assert len(store.list_all(REVISIONS)[0]) == 1

    for count in (0, 101):
        error = refused(cluster, fleet("many", count))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "1 to 100" in error.details()

    vms = fleet("big", 20)
    for vm in vms:
        vm.spec.cloud_init.user_data = "#!/bin/sh\n" + "x" * 60_000  # 60 KB each is allowed alone
    error = refused(cluster, vms)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "smaller batches" in error.details()

    assert names_in_store(cluster) == before | {"sized-000", "sized-001"}, "a refused batch wrote something"
