"""Unit tests of the pure VirtualMachine -> libvirt domain XML builder."""

import xml.etree.ElementTree as ET

import pytest

from corral.v1 import vm_pb2
from launcher.domain_xml import DomainOptions, build_domain_xml

UID = "6c4b7d1e-0f5e-4a8e-9c1e-2f7a1d3b9e01"
TCG = DomainOptions(emulation=True, serial_log_path="/vms/a/serial.log")
KVM = DomainOptions(emulation=False, serial_log_path="/vms/a/serial.log")


def kernel_vm(name: str = "vm-a", cmdline: str = "console=ttyS0") -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = name
    vm.metadata.uid = UID
    vm.spec.vcpus = 2
    vm.spec.memory_mib = 256
    vm.spec.boot.kernel.kernel_path = "/guest/vmlinuz"
    vm.spec.boot.kernel.initrd_path = "/guest/initrd.gz"
    vm.spec.boot.kernel.cmdline = cmdline
    return vm


def disk_vm(fmt: int) -> vm_pb2.VirtualMachine:
    vm = kernel_vm()
    vm.spec.boot.disk.image_path = "/images/a.img"
    vm.spec.boot.disk.format = fmt
    return vm


def parse(vm: vm_pb2.VirtualMachine, options: DomainOptions = TCG) -> ET.Element:
    return ET.fromstring(build_domain_xml(vm, options))


def test_kernel_boot() -> None:
    dom = parse(kernel_vm())
    assert dom.get("type") == "qemu"
    assert dom.findtext("name") == "vm-a"
    assert dom.findtext("uuid") == UID
    assert dom.find("memory").get("unit") == "MiB" and dom.findtext("memory") == "256"
    assert dom.findtext("vcpu") == "2"
    assert dom.findtext("os/kernel") == "/guest/vmlinuz"
    assert dom.findtext("os/initrd") == "/guest/initrd.gz"
    assert dom.findtext("os/cmdline") == "console=ttyS0"
    assert dom.find("os/boot") is None
    assert dom.find("devices/disk") is None
    assert dom.findtext("on_poweroff") == "destroy"
    assert dom.findtext("on_reboot") == "restart"
    assert dom.findtext("on_crash") == "destroy"
    assert dom.find("devices/memballoon").get("model") == "none"
    serial = dom.find("devices/serial")
    assert serial.get("type") == "pty"
    assert serial.find("log").attrib == {"file": "/vms/a/serial.log", "append": "on"}
    assert dom.find("devices/console").get("type") == "pty"
    assert dom.find("cpu") is None


def test_kernel_boot_without_initrd_or_cmdline() -> None:
    vm = kernel_vm(cmdline="")
    vm.spec.boot.kernel.initrd_path = ""
    dom = parse(vm)
    assert dom.find("os/initrd") is None and dom.find("os/cmdline") is None


@pytest.mark.parametrize("fmt,name", [(vm_pb2.DISK_FORMAT_RAW, "raw"),
                                      (vm_pb2.DISK_FORMAT_QCOW2, "qcow2")])
def test_disk_boot_has_explicit_format(fmt: int, name: str) -> None:
    dom = parse(disk_vm(fmt))
    disk = dom.find("devices/disk")
    assert disk.find("driver").attrib == {"name": "qemu", "type": name}
    assert disk.find("source").get("file") == "/images/a.img"
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}
    assert dom.find("os/boot").get("dev") == "hd"
    assert dom.find("os/kernel") is None


def test_disk_format_is_never_probed() -> None:
    with pytest.raises(ValueError, match="never probed"):
        build_domain_xml(disk_vm(vm_pb2.DISK_FORMAT_UNSPECIFIED), TCG)


def test_kvm_vs_qemu() -> None:
    kvm = parse(kernel_vm(), KVM)
    assert kvm.get("type") == "kvm"
    assert kvm.find("cpu").get("mode") == "host-passthrough"
    qemu = parse(kernel_vm(), TCG)
    assert qemu.get("type") == "qemu" and qemu.find("cpu") is None


def test_metacharacters_are_escaped() -> None:
    nasty = """a<b>&'"</name><evil/>"""
    cmdline = """console=ttyS0 x="<&>" y='</cmdline><kernel>/etc/shadow</kernel>'"""
    vm = kernel_vm(name=nasty, cmdline=cmdline)
    vm.spec.boot.kernel.kernel_path = "/p/<&>'\"/vmlinuz"
    text = build_domain_xml(vm, DomainOptions(True, "/d/'\"&<>/serial.log"))
    assert "<evil/>" not in text and "</cmdline><kernel>" not in text
    dom = ET.fromstring(text)
    assert dom.findtext("name") == nasty
    assert dom.findtext("os/cmdline") == cmdline
    assert dom.findtext("os/kernel") == "/p/<&>'\"/vmlinuz"
    assert len(dom.findall("os/kernel")) == 1
    assert dom.find("devices/serial/log").get("file") == "/d/'\"&<>/serial.log"


@pytest.mark.parametrize("mutate,message", [
    (lambda vm: setattr(vm.metadata, "uid", "not-a-uuid"), "not a UUID"),
    (lambda vm: setattr(vm.metadata, "name", ""), "name is empty"),
    (lambda vm: setattr(vm.spec, "vcpus", 0), "vcpus"),
    (lambda vm: setattr(vm.spec, "memory_mib", 0), "memory_mib"),
    (lambda vm: vm.spec.ClearField("boot"), "neither kernel nor disk"),
])
def test_invalid_specs_are_rejected(mutate, message: str) -> None:
    vm = kernel_vm()
    mutate(vm)
    with pytest.raises(ValueError, match=message):
        build_domain_xml(vm, TCG)
