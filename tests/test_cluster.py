"""End to end on real parts: etcd, a controller and handlers as processes on loopback,
launchers owning real QEMU guests (TCG). Each test has its own cluster and key prefix."""
from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from corral.store import Store
from corral.v1 import vm_pb2
from handler.launchers import vm_dir_for
from tests.cluster import pids_mentioning, qemu_pid_for, wait_for

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
PENDING = vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING


def serial_shows_ready(vm: vm_pb2.VirtualMachine) -> bool:
    path = Path(vm.status.serial_log_path)
    return path.exists() and b"CORRAL-GUEST-READY" in path.read_bytes()


def stored_keys(cluster) -> list[bytes]:
    store = Store(endpoints=[cluster.etcd.endpoint], prefix=cluster.prefix)
    try:
        response = store.range(store.raw_key("vms/"), store.raw_key("vms0"))
        return [kv.key for kv in response.kvs]
    finally:
        store.close()


def test_vm_boots_on_a_node_that_fits(cluster):
    cluster.start_controller()
    cluster.start_handler("small", vcpus=1, memory_mib=64)
    cluster.start_handler("big", vcpus=4, memory_mib=2048)
    cluster.create(cluster.guest_vm("demo"))
    vm = cluster.wait_phase("demo", RUNNING, timeout=60)
    assert vm.status.node_name == "big"
    assert [t.phase for t in vm.status.phase_transitions] == [PENDING, vm_pb2.VIRTUAL_MACHINE_PHASE_SCHEDULED, RUNNING]
    wait_for(lambda: serial_shows_ready(cluster.get("demo")), timeout=60, what="the guest's readiness line")
    assert qemu_pid_for(vm.status.instance_uid) is not None


def test_node_selector_is_honoured(cluster):
    cluster.start_controller()
    cluster.start_handler("n1", labels="disk=hdd")
    cluster.start_handler("n2", labels="disk=ssd")
    for index in range(2):
        cluster.create(cluster.guest_vm(f"ssd-{index}", node_selector={"disk": "ssd"}))
    for index in range(2):
        assert cluster.wait_phase(f"ssd-{index}", RUNNING).status.node_name == "n2"


def test_oversized_vm_stays_pending_with_a_reason(cluster):
    cluster.start_controller()
    cluster.start_handler("n1", vcpus=2, memory_mib=512)
    cluster.create(cluster.guest_vm("huge", memory_mib=4096))

    def unschedulable():
        vm = cluster.get("huge")
        return [c for c in vm.status.conditions if c.type == "Scheduled" and c.reason == "Unschedulable"]

    condition = wait_for(unschedulable, timeout=20, what="an Unschedulable condition")[0]
    assert condition.message == "0/1 nodes are available: 1 Insufficient memory."
    time.sleep(1)
    assert cluster.get("huge").status.phase == PENDING


def test_delete_stops_qemu_and_removes_launcher_and_keys(cluster):
    cluster.start_controller()
    cluster.start_handler("n1")
    cluster.create(cluster.guest_vm("doomed"))
    vm = cluster.wait_phase("doomed", RUNNING)
    uid = vm.status.instance_uid
    qemu = wait_for(lambda: qemu_pid_for(uid), timeout=10, what="the QEMU process")
    vm_dir = vm_dir_for(cluster.state_dir("n1"), uid)
    assert vm_dir.is_dir()
    cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="doomed"), timeout=10)
    wait_for(lambda: not stored_keys(cluster), timeout=30, what="the VM's key to go")
    with pytest.raises(grpc.RpcError) as caught:
        cluster.get("doomed")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    wait_for(lambda: not os.path.exists(f"/proc/{qemu}"), timeout=10, what="QEMU to exit")
    assert not pids_mentioning(uid), "a launcher or QEMU of the deleted VM still runs"
    assert not vm_dir.exists()


def test_stale_resource_version_is_aborted_and_changes_nothing(cluster):
    cluster.start_controller()
    created = cluster.create(cluster.guest_vm("etag", memory_mib=10**6))  # unschedulable: stays put
    fresh = wait_for(lambda: (vm := cluster.get("etag")).status.conditions and vm, timeout=10,
                     what="the scheduler to look at the VM")
    changed = vm_pb2.VirtualMachine()
    changed.CopyFrom(fresh)
    changed.metadata.labels["tier"] = "gold"
    updated = cluster.vms.UpdateVirtualMachine(vm_pb2.UpdateVirtualMachineRequest(virtual_machine=changed)).virtual_machine
    assert updated.metadata.resource_version > fresh.metadata.resource_version
    stale = vm_pb2.VirtualMachine()
    stale.CopyFrom(fresh)
    stale.metadata.labels["tier"] = "bronze"
    with pytest.raises(grpc.RpcError) as caught:
        cluster.vms.UpdateVirtualMachine(vm_pb2.UpdateVirtualMachineRequest(virtual_machine=stale))
    assert caught.value.code() == grpc.StatusCode.ABORTED
    with pytest.raises(grpc.RpcError) as caught:
        cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(
            name="etag", resource_version=created.metadata.resource_version))
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert cluster.get("etag").metadata.labels["tier"] == "gold"


@pytest.mark.parametrize("mutate", [
    lambda vm: setattr(vm.metadata, "name", "Bad_Name"),
    lambda vm: setattr(vm.metadata, "name", "a" * 64),
    lambda vm: setattr(vm.spec, "vcpus", 0),
    lambda vm: setattr(vm.spec, "memory_mib", -5),
    lambda vm: setattr(vm.spec.boot.kernel, "kernel_path", "../../etc/passwd"),
    lambda vm: vm.spec.ClearField("boot"),
])
def test_bad_input_is_invalid_argument_and_stores_nothing(cluster, mutate):
    if not cluster.controllers:
        cluster.start_controller()
    vm = cluster.guest_vm("ok-name")
    mutate(vm)
    with pytest.raises(grpc.RpcError) as caught:
        cluster.create(vm)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details()
    assert stored_keys(cluster) == []


def test_handler_sigkill_leaves_the_guest_running_and_it_is_readopted(cluster):
    cluster.start_controller()
    cluster.start_handler("n1")
    cluster.create(cluster.guest_vm("pet"))
    vm = cluster.wait_phase("pet", RUNNING)
    qemu = wait_for(lambda: qemu_pid_for(vm.status.instance_uid), timeout=10, what="the QEMU process")
    cluster.kill_handler("n1")
    time.sleep(1)
    assert qemu_pid_for(vm.status.instance_uid) == qemu
    cluster.start_handler("n1")
    time.sleep(3)  # a full reconcile pass of the new handler
    assert qemu_pid_for(vm.status.instance_uid) == qemu
    assert cluster.get("pet").status.phase == RUNNING
    # The new handler really owns it: deleting stops the same guest.
    cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="pet"), timeout=10)
    wait_for(lambda: not os.path.exists(f"/proc/{qemu}"), timeout=30, what="QEMU to exit")


def test_list_pages_and_watch(cluster):
    cluster.start_controller()
    for index in range(5):
        vm = cluster.guest_vm(f"p{index}", memory_mib=10**6)
        vm.metadata.labels["group"] = "even" if index % 2 == 0 else "odd"
        cluster.create(vm)
    for index in range(5):  # let the scheduler settle so the watch below sees only our delete
        wait_for(lambda: cluster.get(f"p{index}").status.conditions, timeout=10, what="the scheduler")
    names, token = [], ""
    while True:
        page = cluster.vms.ListVirtualMachines(vm_pb2.ListVirtualMachinesRequest(page_size=2, page_token=token))
        assert len(page.virtual_machines) <= 2
        names += [vm.metadata.name for vm in page.virtual_machines]
        token = page.next_page_token
        if not token:
            break
    assert names == ["p0", "p1", "p2", "p3", "p4"]
    evens = cluster.vms.ListVirtualMachines(vm_pb2.ListVirtualMachinesRequest(label_selector="group=even"))
    assert [vm.metadata.name for vm in evens.virtual_machines] == ["p0", "p2", "p4"]
    with pytest.raises(grpc.RpcError) as caught:
        cluster.vms.ListVirtualMachines(vm_pb2.ListVirtualMachinesRequest(page_token="nonsense"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    stream = cluster.vms.WatchVirtualMachines(vm_pb2.WatchVirtualMachinesRequest(
        resource_version=evens.resource_version, label_selector="group=odd"))
    cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="p1"))
    event = next(iter(stream))
    stream.cancel()
    assert event.virtual_machine.metadata.name == "p1"
    assert event.type == 3  # DELETED


def test_reflection_lists_the_services(cluster):
    address = cluster.start_controller()
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
    assert {"corral.v1.VirtualMachineService", "corral.v1.NodeService", "corral.v1.HandlerService",
            "grpc.health.v1.Health"} <= services
