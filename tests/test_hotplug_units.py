"""Unit tests of hotplug's pure parts: the domain XML for vCPU and memory hotplug and for disks
on their own bus, the device XML of an attached disk, the validation of maxima and resizes."""
from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

import grpc
import pytest

from controller.errors import RequestError
from controller.hotplug_api import Hotplug
from corral import hotplug
from corral.cli.hotplug import parse_mib
from corral.resources import VMS
from corral.store import Store
from corral.v1 import vm_pb2
from corral.validation import ValidationError, validate_new_vm
from launcher import domain_xml
from launcher import hotplug as live
from tests.test_launcher_domain_xml import TCG, kernel_vm


def parse(vm: vm_pb2.VirtualMachine) -> ET.Element:
    return ET.fromstring(domain_xml.build_domain_xml(vm, TCG))


def test_without_maxima_the_domain_has_no_hotplug_parts() -> None:
    dom = parse(kernel_vm())
    assert dom.find("vcpu").attrib == {} and dom.find("vcpu").text == "2"
    assert dom.find("maxMemory") is None and dom.find("devices/memory") is None and dom.find("cpu") is None
    assert dom.find("devices/controller").attrib == {"type": "scsi", "index": "0", "model": "virtio-scsi"}


def test_vcpus_are_plugged_up_to_max_vcpus() -> None:
    vm = kernel_vm()
    vm.spec.vcpus, vm.spec.max_vcpus = 1, 4
    vcpu = parse(vm).find("vcpu")
    assert (vcpu.text, vcpu.get("current")) == ("4", "1")


def test_memory_hotplug_is_a_numa_cell_and_a_virtio_mem_device() -> None:
    vm = kernel_vm()
    vm.spec.vcpus, vm.spec.max_vcpus = 1, 2
    vm.spec.memory_mib, vm.spec.max_memory_mib = 256, 500  # 244 MiB more: two 128 MiB guest blocks
    dom = parse(vm)
    assert dom.find("maxMemory").attrib == {"slots": "1", "unit": "MiB"} and dom.find("maxMemory").text == "512"
    assert dom.find("memory").text == "256"
    assert dom.find("cpu/numa/cell").attrib == {"id": "0", "cpus": "0-1", "memory": "256", "unit": "MiB"}
    device = dom.find("devices/memory")
    assert device.get("model") == "virtio-mem"
    assert {child.tag: child.text for child in device.find("target")} == {
        "size": "256", "node": "0", "block": "2", "requested": "0"}


def test_a_disk_keeps_its_own_bus_on_the_next_run() -> None:
    vm = kernel_vm()
    vm.spec.disks.add(name="boot2", persistent=vm_pb2.PersistentDisk(path="/d/a.img", format=vm_pb2.DISK_FORMAT_RAW))
    vm.spec.disks.add(name="added", persistent=vm_pb2.PersistentDisk(path="/d/b.img", format=vm_pb2.DISK_FORMAT_RAW),
                      bus=vm_pb2.DISK_BUS_SCSI)
    options = domain_xml.DomainOptions(emulation=True, serial_log_path="/l", run_dir="/run")
    dom = ET.fromstring(domain_xml.build_domain_xml(vm, options))
    targets = [(d.findtext("serial"), d.find("target").attrib) for d in dom.findall("devices/disk")]
    assert targets == [("boot2", {"dev": "vdb", "bus": "virtio"}), ("added", {"dev": "sdc", "bus": "scsi"})]


def test_attached_disk_xml() -> None:
    disk = vm_pb2.Disk(name="data", persistent=vm_pb2.PersistentDisk(path="/d/x.qcow2", format=vm_pb2.DISK_FORMAT_QCOW2),
                       read_only=True)
    element = ET.fromstring(domain_xml.persistent_disk_xml(disk, target="sdb", block_device=False))
    assert element.attrib == {"type": "file", "device": "disk"}
    assert element.find("driver").attrib == {"name": "qemu", "type": "qcow2"}
    assert element.find("source").attrib == {"file": "/d/x.qcow2"}
    assert element.find("target").attrib == {"dev": "sdb", "bus": "scsi"}
    assert element.findtext("serial") == "data" and element.find("readonly") is not None
    block = ET.fromstring(domain_xml.persistent_disk_xml(disk, target="sdc", block_device=True))
    assert block.get("type") == "block" and block.find("source").attrib == {"dev": "/d/x.qcow2"}
    with pytest.raises(ValueError):
        domain_xml.persistent_disk_xml(vm_pb2.Disk(name="e", ephemeral=vm_pb2.EphemeralDisk(
            base_image_path="/i", base_format=vm_pb2.DISK_FORMAT_RAW)), target="sdb", block_device=False)


def test_free_target_skips_names_in_use() -> None:
    root = ET.fromstring("<domain><devices><disk><target dev='sda'/></disk><disk><target dev='sdb'/></disk>"
                         "<disk><target dev='sdd'/></disk></devices></domain>")
    assert live.free_target(root, "sd") == "sdc"


def test_cpu_lists_and_sizes() -> None:
    assert live._cpu_list("0-2,4") == {0, 1, 2, 4} and live._cpu_list("") == set()
    assert live._mib(ET.fromstring("<current unit='KiB'>131072</current>")) == 128
    assert [parse_mib(text) for text in ("512", "512Mi", "2Gi")] == [512, 512, 2048]


def vm_with(**spec) -> vm_pb2.VirtualMachine:
    vm = kernel_vm()
    for key, value in spec.items():
        setattr(vm.spec, key, value)
    return vm


@pytest.mark.parametrize("spec,field", [
    ({"vcpus": 2, "max_vcpus": 1}, "spec.max_vcpus"),
    ({"max_vcpus": 1000}, "spec.max_vcpus"),
    ({"memory_mib": 256, "max_memory_mib": 128}, "spec.max_memory_mib"),
    ({"max_vcpus": 4, "dedicated_cpu_placement": True}, "spec.max_vcpus"),
])
def test_bad_maxima_are_refused(spec, field) -> None:
    with pytest.raises(ValidationError) as info:
        validate_new_vm(vm_with(**spec))
    assert any(problem.startswith(field) for problem in info.value.problems), info.value.problems


def test_topology_describes_every_possible_vcpu() -> None:
    vm = vm_with(vcpus=1, max_vcpus=4)
    vm.spec.cpu_topology.sockets, vm.spec.cpu_topology.cores, vm.spec.cpu_topology.threads = 4, 1, 1
    validate_new_vm(vm)
    vm.spec.cpu_topology.sockets = 1
    with pytest.raises(ValidationError):
        validate_new_vm(vm)


def test_resize_problems() -> None:
    spec = vm_pb2.VirtualMachineSpec(vcpus=1, max_vcpus=4, memory_mib=256, max_memory_mib=512)
    assert hotplug.resize_problems(spec, vcpus=4, memory_mib=512, boot_memory_mib=256) == []
    assert hotplug.resize_problems(spec, vcpus=5, memory_mib=None, boot_memory_mib=256)
    assert hotplug.resize_problems(spec, vcpus=None, memory_mib=128, boot_memory_mib=256)
    assert hotplug.resize_problems(spec, vcpus=None, memory_mib=257, boot_memory_mib=256)
    plain = vm_pb2.VirtualMachineSpec(vcpus=1, memory_mib=256)
    assert "max_vcpus" in hotplug.resize_problems(plain, vcpus=2, memory_mib=None, boot_memory_mib=256)[0]
    assert "max_memory_mib" in hotplug.resize_problems(plain, vcpus=None, memory_mib=512, boot_memory_mib=256)[0]


def test_hotplug_waits_for_a_snapshot_or_restore_of_the_disks(etcd) -> None:
    """A VM whose disks a snapshot or restore is working on refuses every hotplug verb with
    FAILED_PRECONDITION naming the snapshot, and nothing is written (real etcd)."""
    store = Store(endpoints=[etcd.endpoint], prefix=f"/hp-{uuid.uuid4().hex[:8]}/")
    try:
        vm = vm_pb2.VirtualMachine()
        vm.metadata.name = "held"
        vm.spec.vcpus, vm.spec.max_vcpus, vm.spec.memory_mib = 1, 2, 256
        vm.status.snapshot_in_progress = "nightly"
        stored = store.create(VMS, vm)
        hotplug = Hotplug(store=store, cache=None, node_agents=None)
        disk = vm_pb2.Disk(name="data")
        disk.persistent.path = "/var/lib/corral/disks/data.qcow2"
        calls = [lambda: hotplug.add_volume(vm_pb2.AddVolumeRequest(name="held", disk=disk)),
                 lambda: hotplug.remove_volume(vm_pb2.RemoveVolumeRequest(name="held", disk_name="data")),
                 lambda: hotplug.resize(vm_pb2.ResizeVirtualMachineRequest(name="held", vcpus=2))]
        for call in calls:
            with pytest.raises(RequestError) as refused:
                call()
            assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "snapshot nightly" in str(refused.value)
        assert store.get(VMS, "held").metadata.resource_version == stored.metadata.resource_version
    finally:
        store.close()
