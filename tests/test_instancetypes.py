"""Instance types and preferences on a real controller and etcd (issue 12, part 2): values
copied at creation, revisions that keep a VM's size when the type changes, refusals that name
the field and write nothing, deletes refused while something names a type; and one real guest
booted (TCG) with a non-default preference, checked from inside through its console."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import grpc
import pytest

from controller import auth
from corral.resources import POOLS, REVISIONS, VMS
from corral.store import Store
from corral.v1 import instancetype_pb2 as it_pb2, instancetype_pb2_grpc as it_grpc, pool_pb2, vm_pb2
from tests.cluster import Cluster, qemu_pid_for, wait_for
from tests.test_console import Console
from tests.test_mtls import _ctx

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING


def types(cluster: Cluster) -> it_grpc.InstanceTypeServiceStub:
    return it_grpc.InstanceTypeServiceStub(cluster.channel())


def preferences(cluster: Cluster) -> it_grpc.PreferenceServiceStub:
    return it_grpc.PreferenceServiceStub(cluster.channel())


def make_type(cluster: Cluster, name: str, vcpus: int = 1, memory_mib: int = 128, **labels: str) -> it_pb2.InstanceType:
    obj = it_pb2.InstanceType(spec=it_pb2.InstanceTypeSpec(vcpus=vcpus, memory_mib=memory_mib))
    obj.metadata.name = name
    obj.metadata.labels.update(labels)
    return types(cluster).CreateInstanceType(it_pb2.CreateInstanceTypeRequest(instance_type=obj),
                                             timeout=10).instance_type


def make_preference(cluster: Cluster, name: str, spec: it_pb2.PreferenceSpec) -> it_pb2.Preference:
    obj = it_pb2.Preference(spec=spec)
    obj.metadata.name = name
    return preferences(cluster).CreatePreference(it_pb2.CreatePreferenceRequest(preference=obj),
                                                 timeout=10).preference


def typed_vm(cluster: Cluster, name: str, type_name: str, preference: str = "") -> vm_pb2.VirtualMachine:
    vm = cluster.guest_vm(name)
    vm.spec.ClearField("vcpus")
    vm.spec.ClearField("memory_mib")
    vm.spec.instance_type.name = type_name
    vm.spec.preference.name = preference
    vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_HALTED  # no node needed
    return vm


def store_of(cluster: Cluster) -> Store:
    return Store(endpoints=[cluster.etcd.endpoint], prefix=cluster.prefix)


def update_vm(cluster: Cluster, name: str, change) -> vm_pb2.VirtualMachine:
    """The VM as Get returns it, changed by ``change(vm)``, sent back (read and sent again when
    the leader wrote its status in between: ABORTED)."""
    for _ in range(5):
        current = cluster.get(name)
        change(current)
        try:
            return cluster.vms.UpdateVirtualMachine(vm_pb2.UpdateVirtualMachineRequest(virtual_machine=current),
                                                    timeout=10).virtual_machine
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ABORTED:
                raise
    raise AssertionError(f"vm {name} kept changing")


def code_and_details(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


@pytest.fixture
def controller(cluster: Cluster) -> Cluster:
    cluster.start_controller()
    return cluster


def test_values_are_copied_and_kept_when_the_type_changes(controller: Cluster) -> None:
    created_type = make_type(controller, "u1.small", vcpus=2, memory_mib=256)
    make_preference(controller, "linux.q35", it_pb2.PreferenceSpec(
        machine_type="q35", disk_bus=vm_pb2.DISK_BUS_SATA,
        preferred_cpu_topology=it_pb2.PREFERRED_CPU_TOPOLOGY_CORES))
    vm = controller.create(typed_vm(controller, "sized", "u1.small", "linux.q35"))
    assert (vm.spec.vcpus, vm.spec.memory_mib) == (2, 256)
    assert (vm.spec.machine_type, vm.spec.disk_bus) == ("q35", vm_pb2.DISK_BUS_SATA)
    assert vm.spec.cpu_topology == vm_pb2.CpuTopology(sockets=1, cores=2, threads=1)
    revision = vm.spec.instance_type.revision_name
    assert revision == f"instancetype-u1.small-{created_type.metadata.resource_version}"
    store = store_of(controller)
    try:
        assert store.get(REVISIONS, revision).instance_type.vcpus == 2
        # The type grows: the existing VM keeps its size and revision, a new VM gets the new one.
        created_type.spec.vcpus = 4
        updated = types(controller).UpdateInstanceType(
            it_pb2.UpdateInstanceTypeRequest(instance_type=created_type), timeout=10).instance_type
        assert updated.spec.vcpus == 4
        again = controller.get("sized")
        assert again.spec.vcpus == 2 and again.spec.instance_type.revision_name == revision
        assert store.get(REVISIONS, revision).instance_type.vcpus == 2
        other = controller.create(typed_vm(controller, "sized-later", "u1.small"))
        assert other.spec.vcpus == 4 and other.spec.instance_type.revision_name != revision
        # An update that sends the resolved spec back (labels changed) keeps the old revision.
        kept = update_vm(controller, "sized", lambda vm: vm.metadata.labels.update(touched="yes"))
        assert kept.spec.vcpus == 2 and kept.spec.instance_type.revision_name == revision
        # ... but one that changes a fixed value is refused, naming it.
        code, details = code_and_details(lambda: update_vm(controller, "sized",
                                                           lambda vm: setattr(vm.spec, "vcpus", 3)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "spec.vcpus is fixed by instance type u1.small" in details
    finally:
        store.close()


def test_refusals_name_the_problem_and_write_nothing(controller: Cluster) -> None:
    make_type(controller, "u1.nano")
    vm = typed_vm(controller, "fixed", "u1.nano")
    vm.spec.vcpus = 2
    code, details = code_and_details(lambda: controller.create(vm))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.vcpus is fixed by instance type u1.nano: leave it unset" in details
    code, details = code_and_details(lambda: controller.create(typed_vm(controller, "ghost", "u9.huge")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "instance type 'u9.huge' not found" in details and "ListInstanceTypes" in details
    code, details = code_and_details(lambda: controller.create(typed_vm(controller, "ghost2", "u1.nano", "nope")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "preference 'nope' not found" in details
    store = store_of(controller)
    try:
        assert store.list_all(VMS)[0] == []
        assert store.list_all(REVISIONS)[0] == []  # the refused VMs recorded no revision either
    finally:
        store.close()
    # Without an instance type the size is still required.
    bare = controller.guest_vm("bare")
    bare.spec.ClearField("vcpus")
    code, details = code_and_details(lambda: controller.create(bare))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "spec.vcpus must be between 1" in details


def test_delete_is_refused_while_named_then_allowed(controller: Cluster) -> None:
    created = make_type(controller, "u1.micro")
    controller.create(typed_vm(controller, "user", "u1.micro"))
    store = store_of(controller)
    try:
        pool = pool_pb2.VirtualMachinePool()
        pool.metadata.name = "web"
        pool.spec.virtual_machine_template.spec.instance_type.name = "u1.micro"
        store.create(POOLS, pool)  # written directly: the pool service is another part of issue 12
        request = it_pb2.DeleteInstanceTypeRequest(name="u1.micro")
        code, details = code_and_details(lambda: types(controller).DeleteInstanceType(request, timeout=10))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "vm user" in details and "pool web" in details
        store.delete(POOLS, "web")
        controller.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="user"), timeout=10)
        stale = it_pb2.DeleteInstanceTypeRequest(name="u1.micro",
                                                 resource_version=created.metadata.resource_version - 1)
        code, _ = code_and_details(lambda: types(controller).DeleteInstanceType(stale, timeout=10))
        assert code == grpc.StatusCode.ABORTED
        types(controller).DeleteInstanceType(request, timeout=10)
        code, _ = code_and_details(lambda: types(controller).GetInstanceType(
            it_pb2.GetInstanceTypeRequest(name="u1.micro"), timeout=10))
        assert code == grpc.StatusCode.NOT_FOUND
    finally:
        store.close()


def test_update_etag_names_and_listing(controller: Cluster) -> None:
    created = make_type(controller, "u1.medium", vcpus=1, memory_mib=512, series="u1")
    created.spec.memory_mib = 1024
    first = types(controller).UpdateInstanceType(it_pb2.UpdateInstanceTypeRequest(instance_type=created), timeout=10)
    code, details = code_and_details(lambda: types(controller).UpdateInstanceType(
        it_pb2.UpdateInstanceTypeRequest(instance_type=created), timeout=10))  # the old resource_version
    assert code == grpc.StatusCode.ABORTED and "read it again" in details
    assert first.instance_type.spec.memory_mib == 1024
    for bad in ("U1.Medium", "u1..x", "u1_x", "", "a" * 201):
        code, details = code_and_details(lambda: make_type(controller, bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "metadata.name" in details
    code, details = code_and_details(lambda: make_type(controller, "u1.zero", vcpus=0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "spec.vcpus" in details
    code, _ = code_and_details(lambda: make_type(controller, "u1.medium"))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    for name in ("u1.large", "u1.nano", "u1.small", "x1.odd"):
        make_type(controller, name, series=name.split(".")[0])
    stub = types(controller)
    names, token = [], ""
    while True:
        page = stub.ListInstanceTypes(it_pb2.ListInstanceTypesRequest(page_size=2, page_token=token,
                                                                      label_selector="series=u1"), timeout=10)
        assert len(page.instance_types) <= 2
        names += [obj.metadata.name for obj in page.instance_types]
        token = page.next_page_token
        if not token:
            break
    assert names == ["u1.large", "u1.medium", "u1.nano", "u1.small"]
    code, _ = code_and_details(lambda: stub.ListInstanceTypes(
        it_pb2.ListInstanceTypesRequest(label_selector="bad key=x"), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_viewer_may_read_but_not_change_the_catalogue() -> None:
    viewer = _ctx("bob")  # a user certificate without a role
    for service in ("InstanceTypeService", "PreferenceService"):
        noun = "InstanceType" if service == "InstanceTypeService" else "Preference"
        assert auth.service_refusal(viewer, f"/corral.v1.{service}/Get{noun}") is None
        assert auth.service_refusal(viewer, f"/corral.v1.{service}/List{noun}s") is None
        for verb in ("Create", "Update", "Delete"):
            assert "may only read" in auth.service_refusal(viewer, f"/corral.v1.{service}/{verb}{noun}")


@pytest.mark.slow
def test_a_guest_boots_with_the_q35_preference(controller: Cluster) -> None:
    """q35, CPU topology of one socket of two cores and a user network (its NIC on pcie.0),
    all from the preference, checked from inside the guest."""
    controller.start_handler("n1", vcpus=4, memory_mib=2048)
    make_type(controller, "u1.small", vcpus=2, memory_mib=256)
    make_preference(controller, "linux.q35", it_pb2.PreferenceSpec(
        machine_type="q35", preferred_cpu_topology=it_pb2.PREFERRED_CPU_TOPOLOGY_CORES))
    name = f"q35-{uuid.uuid4().hex[:6]}"
    vm = typed_vm(controller, name, "u1.small", "linux.q35")
    vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_ALWAYS
    vm.spec.networks.add(name="default").user.SetInParent()
    controller.create(vm)
    controller.wait_phase(name, RUNNING, timeout=90)
    console = Console(controller.vms, name)
    try:
        console.run(b"cat /sys/class/dmi/id/product_name", rb"Q35")
        # Two cores of one socket: the second vCPU is in package 0 with 2 siblings.
        console.run(b"echo pkg=$(cat /sys/devices/system/cpu/cpu1/topology/physical_package_id)"
                    b" n=$(grep -c ^processor /proc/cpuinfo)", rb"pkg=0 n=2")
        console.run(b"ls /sys/class/net", rb"eth0")
    finally:
        console.close()


def vcpu_affinity(qemu_pid: int) -> dict[str, str]:
    """Cpus_allowed_list of each of QEMU's vCPU threads ("CPU 0/TCG", "CPU 0/KVM"), by name."""
    found = {}
    for task in Path(f"/proc/{qemu_pid}/task").iterdir():
        name = (task / "comm").read_text().strip()
        if name.startswith("CPU "):
            status = (task / "status").read_text()
            found[name] = next(line.split(":", 1)[1].strip() for line in status.splitlines()
                               if line.startswith("Cpus_allowed_list:"))
    return found


@pytest.mark.slow
def test_dedicated_cpus_are_pinned_on_the_node(controller: Cluster) -> None:
    """An instance type with dedicated CPUs: the node gives the run a host CPU of its own and
    QEMU's vCPU thread runs only there; a second such VM gets another CPU."""
    host = sorted(os.sched_getaffinity(0))
    if len(host) < 2:
        pytest.skip("needs two host CPUs")
    controller.start_handler("n1", vcpus=len(host), memory_mib=2048)
    obj = it_pb2.InstanceType(spec=it_pb2.InstanceTypeSpec(vcpus=1, memory_mib=128, dedicated_cpu_placement=True))
    obj.metadata.name = "d1.nano"
    types(controller).CreateInstanceType(it_pb2.CreateInstanceTypeRequest(instance_type=obj), timeout=10)
    pins = []
    for name in ("pinned-a", "pinned-b"):
        vm = typed_vm(controller, name, "d1.nano")
        vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_ALWAYS
        created = controller.create(vm)
        assert created.spec.dedicated_cpu_placement
        running = controller.wait_phase(name, RUNNING, timeout=90)
        pid = wait_for(lambda: qemu_pid_for(running.status.instance_uid), timeout=30, what="QEMU's pid")
        affinity = wait_for(lambda: vcpu_affinity(pid), timeout=10, what="QEMU's vCPU threads")
        assert list(affinity) == ["CPU 0/TCG"]
        pins.append(affinity["CPU 0/TCG"])
    assert len(set(pins)) == 2 and all(pin.isdigit() and int(pin) in host for pin in pins), pins
    # A third does not fit: two CPUs, both dedicated (the scheduler says why).
    third = typed_vm(controller, "pinned-c", "d1.nano")
    third.spec.run_strategy = vm_pb2.RUN_STRATEGY_ALWAYS
    controller.create(third)
    wait_for(lambda: any("Insufficient dedicated cpus" in c.message
                         for c in controller.get("pinned-c").status.conditions),
             timeout=30, what="pinned-c to be unschedulable for want of dedicated CPUs")


@pytest.mark.slow
def test_a_guest_boots_with_uefi(controller: Cluster) -> None:
    """A preference with UEFI firmware (OVMF, no secure boot): the guest kernel sees EFI."""
    if not Path("/usr/share/qemu/firmware/60-edk2-x86_64.json").exists():
        pytest.skip("OVMF is not installed (apt-get install ovmf)")
    controller.start_handler("n1", vcpus=4, memory_mib=2048)
    make_type(controller, "u1.small", vcpus=1, memory_mib=256)
    make_preference(controller, "linux.efi", it_pb2.PreferenceSpec(firmware=vm_pb2.FIRMWARE_UEFI))
    vm = typed_vm(controller, "efi", "u1.small", "linux.efi")
    vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_ALWAYS
    assert controller.create(vm).spec.firmware == vm_pb2.FIRMWARE_UEFI
    controller.wait_phase("efi", RUNNING, timeout=90)
    console = Console(controller.vms, "efi")
    try:
        # (the answer must not be in the echoed command line: "efi-" + the count)
        console.run(b"echo efi-$(ls /sys/firmware | grep -c '^efi$')", rb"efi-1\r?\n")
    finally:
        console.close()


def test_the_example_catalogue_is_accepted_and_sizes_the_example_vm(controller: Cluster) -> None:
    from corral.manifest import parse_objects  # noqa: PLC0415
    examples = Path(__file__).resolve().parent.parent / "examples"
    for file in ("instancetypes.yaml", "preferences.yaml"):
        for obj in parse_objects((examples / file).read_text(), file):
            if isinstance(obj, it_pb2.InstanceType):
                types(controller).CreateInstanceType(it_pb2.CreateInstanceTypeRequest(instance_type=obj), timeout=10)
            else:
                preferences(controller).CreatePreference(it_pb2.CreatePreferenceRequest(preference=obj), timeout=10)
    listed = types(controller).ListInstanceTypes(it_pb2.ListInstanceTypesRequest(label_selector="series=u1"),
                                                 timeout=10).instance_types
    assert [t.metadata.name for t in listed] == ["u1.large", "u1.medium", "u1.micro", "u1.nano", "u1.small"]
    assert all(t.spec.memory_mib >= 128 for t in listed)
    [vm] = parse_objects((examples / "vm-instancetype.yaml").read_text(), "vm-instancetype.yaml")
    created = controller.create(vm)
    assert (created.spec.vcpus, created.spec.memory_mib) == (1, 512)
    assert created.spec.termination_grace_period_seconds == 30  # from the preference "linux"
    assert created.spec.machine_type == "pc" and created.spec.preference.revision_name.startswith("preference-linux-")


@pytest.mark.slow
@pytest.mark.parametrize("machine,bus", [("q35", vm_pb2.DISK_BUS_SATA), ("pc", vm_pb2.DISK_BUS_SCSI)])
def test_a_guest_runs_with_its_disk_on_the_preferred_bus(controller: Cluster, machine: str, bus: int) -> None:
    """A preference's disk bus: QEMU starts with the disk on SATA (q35's AHCI) or virtio-scsi;
    with virtio-scsi the guest's kernel finds it as sda, not vdb. (The test guest's cloud kernel
    has no AHCI driver: for SATA, that QEMU runs the guest is what is checked.)"""
    disks = controller.node_root / "disks"
    disks.mkdir()
    with open(disks / "data.img", "wb") as image:
        image.truncate(16 << 20)
    controller.start_handler("n1", vcpus=4, memory_mib=2048, extra=["--disk-roots", str(disks)])
    make_type(controller, "u1.small", vcpus=1, memory_mib=256)
    make_preference(controller, "bus", it_pb2.PreferenceSpec(machine_type=machine, disk_bus=bus))
    vm = typed_vm(controller, "disky", "u1.small", "bus")
    vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_ALWAYS
    vm.spec.disks.add(name="data").persistent.CopyFrom(vm_pb2.PersistentDisk(path=str(disks / "data.img"),
                                                                             format=vm_pb2.DISK_FORMAT_RAW))
    assert controller.create(vm).spec.disk_bus == bus
    controller.wait_phase("disky", RUNNING, timeout=90)
    console = Console(controller.vms, "disky")
    try:
        # (the answer must not be in the echoed command line: "blk-" + the list)
        command = b"echo blk-$(ls /sys/block | grep -v loop | tr '\\n' ,)"

        def disks_seen() -> list[str]:
            return console.run(command, rb"blk-([a-z,]*)\r?\n").group(1).decode().split(",")

        if bus == vm_pb2.DISK_BUS_SCSI:  # the SCSI scan is asynchronous: ask until it is done
            wait_for(lambda: "sda" in disks_seen(), timeout=30, what="the guest to find sda")
        seen = disks_seen()
        assert not any(name.startswith("vd") for name in seen), seen  # nothing on virtio-blk
    finally:
        console.close()


def test_an_update_naming_another_type_resizes_a_stopped_vm(controller: Cluster) -> None:
    make_type(controller, "u1.nano", vcpus=1, memory_mib=128)
    make_type(controller, "u1.medium", vcpus=2, memory_mib=1024)
    make_preference(controller, "linux", it_pb2.PreferenceSpec(machine_type="pc", disk_bus=vm_pb2.DISK_BUS_VIRTIO))
    make_preference(controller, "linux.q35", it_pb2.PreferenceSpec(machine_type="q35"))
    vm = controller.create(typed_vm(controller, "grow", "u1.nano", "linux"))  # Halted: no run
    assert (vm.spec.vcpus, vm.spec.machine_type) == (1, "pc")

    def to_medium_q35(vm: vm_pb2.VirtualMachine) -> None:
        vm.spec.instance_type.name = "u1.medium"
        vm.spec.preference.name = "linux.q35"

    vm = update_vm(controller, "grow", to_medium_q35)
    assert (vm.spec.vcpus, vm.spec.memory_mib) == (2, 1024)
    assert vm.spec.instance_type.revision_name.startswith("instancetype-u1.medium-")
    assert vm.spec.machine_type == "q35"  # the old preference's default gave way to the new one's
    assert vm.spec.disk_bus == vm_pb2.DISK_BUS_UNSPECIFIED
    # No longer sized by a type: the values become the VM's own, and may change.
    vm = update_vm(controller, "grow", lambda vm: vm.spec.ClearField("instance_type"))
    assert (vm.spec.vcpus, vm.spec.memory_mib) == (2, 1024) and not vm.spec.HasField("instance_type")
    assert update_vm(controller, "grow", lambda vm: setattr(vm.spec, "vcpus", 1)).spec.vcpus == 1


def test_a_node_claiming_more_cpus_than_it_has_fails_a_dedicated_run(controller: Cluster) -> None:
    """The scheduler counts the CPUs a node reports; the node pins only the CPUs it really has.
    A run it cannot pin fails with a reason instead of floating over other runs' CPUs."""
    host = sorted(os.sched_getaffinity(0))
    controller.start_handler("n1", vcpus=len(host) * 4, memory_mib=2048)
    obj = it_pb2.InstanceType(spec=it_pb2.InstanceTypeSpec(vcpus=len(host) + 1, memory_mib=128,
                                                           dedicated_cpu_placement=True))
    obj.metadata.name = "d1.toobig"
    types(controller).CreateInstanceType(it_pb2.CreateInstanceTypeRequest(instance_type=obj), timeout=10)
    vm = typed_vm(controller, "unpinnable", "d1.toobig")
    vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_ONCE
    controller.create(vm)
    failed = controller.wait_phase("unpinnable", vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED, timeout=60)
    ready = next(c for c in failed.status.conditions if c.type == "Ready")
    assert ready.reason == "InsufficientDedicatedCPUs" and "host CPUs free" in ready.message
    assert qemu_pid_for(failed.status.instance_uid) is None
