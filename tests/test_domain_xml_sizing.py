"""Unit tests of the domain XML for what instance types and preferences set: machine type,
firmware, disk bus, CPU topology, huge pages, dedicated CPUs."""

import xml.etree.ElementTree as ET

import pytest

from corral.v1 import vm_pb2
from launcher.domain_xml import QEMU_NS, DomainOptions, build_domain_xml
from tests.test_launcher_domain_xml import TCG, KVM, kernel_vm, disk_vm


def parse(vm: vm_pb2.VirtualMachine, options: DomainOptions = TCG) -> ET.Element:
    return ET.fromstring(build_domain_xml(vm, options))


def test_defaults_are_unchanged() -> None:
    dom = parse(kernel_vm())
    assert dom.find("os").get("firmware") is None
    assert dom.find("os/type").get("machine") is None
    assert dom.find("memoryBacking") is None and dom.find("cputune") is None and dom.find("cpu") is None


def test_machine_type_and_uefi() -> None:
    vm = kernel_vm()
    vm.spec.machine_type = "pc-q35-7.2"
    vm.spec.firmware = vm_pb2.FIRMWARE_UEFI
    dom = parse(vm)
    assert dom.find("os/type").attrib == {"arch": "x86_64", "machine": "pc-q35-7.2"}
    assert dom.find("os").get("firmware") == "efi"
    assert dom.find("os/firmware/feature").attrib == {"enabled": "no", "name": "secure-boot"}


def test_bios_is_libvirts_default() -> None:
    vm = kernel_vm()
    vm.spec.firmware = vm_pb2.FIRMWARE_BIOS
    assert parse(vm).find("os").get("firmware") is None


@pytest.mark.parametrize("machine,bus,slot", [("", "pci.0", "0x1f"), ("pc", "pci.0", "0x1f"),
                                              ("q35", "pcie.0", "0x1e"), ("pc-q35-7.2", "pcie.0", "0x1e")])
def test_user_network_nic_is_on_the_machines_root_bus(machine: str, bus: str, slot: str) -> None:
    vm = kernel_vm()
    vm.spec.machine_type = machine
    vm.spec.networks.add(name="default").user.SetInParent()
    args = [arg.get("value") for arg in parse(vm).iter(f"{{{QEMU_NS}}}arg")]
    device = args[args.index("-device") + 1]
    assert f",bus={bus},addr={slot}" in device


@pytest.mark.parametrize("bus,name,prefix", [(vm_pb2.DISK_BUS_UNSPECIFIED, "virtio", "vd"),
                                             (vm_pb2.DISK_BUS_VIRTIO, "virtio", "vd"),
                                             (vm_pb2.DISK_BUS_SCSI, "scsi", "sd"),
                                             (vm_pb2.DISK_BUS_SATA, "sata", "sd")])
def test_disk_bus_applies_to_every_disk(bus: int, name: str, prefix: str) -> None:
    vm = disk_vm(vm_pb2.DISK_FORMAT_QCOW2)
    vm.spec.disk_bus = bus
    vm.spec.disks.add(name="data").persistent.CopyFrom(vm_pb2.PersistentDisk(path="/d/data.img",
                                                                             format=vm_pb2.DISK_FORMAT_RAW))
    vm.spec.cloud_init.user_data = "#cloud-config\n"
    dom = parse(vm, DomainOptions(emulation=True, serial_log_path="/l", run_dir="/run/vm"))
    targets = [disk.find("target").attrib for disk in dom.findall("devices/disk")]
    assert targets == [{"dev": f"{prefix}a", "bus": name}, {"dev": f"{prefix}b", "bus": name},
                       {"dev": f"{prefix}c", "bus": name}]
    controllers = [c.attrib for c in dom.findall("devices/controller")]
    # Every domain has the virtio-scsi controller: disks added to a running VM go on it.
    assert controllers == [{"type": "scsi", "index": "0", "model": "virtio-scsi"}]


def test_cpu_topology_under_tcg_and_kvm() -> None:
    vm = kernel_vm()  # 2 vCPUs
    vm.spec.cpu_topology.CopyFrom(vm_pb2.CpuTopology(sockets=1, cores=2, threads=1))
    tcg = parse(vm)
    assert tcg.find("cpu").attrib == {}
    assert tcg.find("cpu/topology").attrib == {"sockets": "1", "dies": "1", "cores": "2", "threads": "1"}
    kvm = parse(vm, KVM)
    assert len(kvm.findall("cpu")) == 1 and kvm.find("cpu").get("mode") == "host-passthrough"
    assert kvm.find("cpu/topology").get("cores") == "2"


def test_cpu_topology_must_make_the_vcpus() -> None:
    vm = kernel_vm()
    vm.spec.cpu_topology.CopyFrom(vm_pb2.CpuTopology(sockets=2, cores=2, threads=1))
    with pytest.raises(ValueError, match="does not make 2 vCPUs"):
        build_domain_xml(vm, TCG)


@pytest.mark.parametrize("size,kib", [("2Mi", "2048"), ("1Gi", "1048576")])
def test_hugepages(size: str, kib: str) -> None:
    vm = kernel_vm()
    vm.spec.memory_mib = 1024
    vm.spec.hugepages.page_size = size
    assert parse(vm).find("memoryBacking/hugepages/page").attrib == {"size": kib, "unit": "KiB"}


def test_unknown_values_never_reach_libvirt() -> None:
    for change in (lambda vm: setattr(vm.spec, "machine_type", "q35' evil='1"),
                   lambda vm: setattr(vm.spec, "machine_type", "microvm"),
                   lambda vm: vm.spec.hugepages.SetInParent(),
                   lambda vm: setattr(vm.spec, "disk_bus", 9),
                   lambda vm: setattr(vm.spec, "firmware", 7)):
        vm = kernel_vm()
        change(vm)
        with pytest.raises(ValueError):
            build_domain_xml(vm, TCG)


def test_dedicated_cpus_are_pinned_when_the_node_gives_them() -> None:
    vm = kernel_vm()
    vm.spec.dedicated_cpu_placement = True
    assert parse(vm).find("cputune") is None  # no CPU set from the node: not pinned
    dom = parse(vm, DomainOptions(emulation=True, serial_log_path="/l", cpuset=(3, 5)))
    assert [pin.attrib for pin in dom.findall("cputune/vcpupin")] == [{"vcpu": "0", "cpuset": "3"},
                                                                      {"vcpu": "1", "cpuset": "5"}]
    with pytest.raises(ValueError, match="distinct host CPUs"):
        build_domain_xml(vm, DomainOptions(emulation=True, serial_log_path="/l", cpuset=(3, 3)))
    vm.spec.dedicated_cpu_placement = False  # shared CPUs: a CPU set means nothing
    assert parse(vm, DomainOptions(emulation=True, serial_log_path="/l", cpuset=(3, 5))).find("cputune") is None
