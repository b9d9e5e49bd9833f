"""Pure translation of a ``corral.v1.VirtualMachine`` into libvirt domain XML.

Built with ElementTree, never by string formatting, so that names, kernel command
lines and paths taken from the user are always escaped by the serializer.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from corral.v1 import vm_pb2

_DISK_FORMATS: dict[int, str] = {
    vm_pb2.DISK_FORMAT_RAW: "raw",
    vm_pb2.DISK_FORMAT_QCOW2: "qcow2",
}


@dataclass(frozen=True)
class DomainOptions:
    """Node-side settings that are not part of the VM spec."""

    # True: TCG emulation (domain type 'qemu'); False: hardware KVM (type 'kvm').
    emulation: bool
    # Where QEMU appends the guest's serial console output.
    serial_log_path: str


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = text
    return element


def domain_uuid(vm: vm_pb2.VirtualMachine) -> str:
    """Each run of a VM is its own domain: the instance uid, else (older handlers) the VM's."""
    return vm.status.instance_uid or vm.metadata.uid


def validate(vm: vm_pb2.VirtualMachine) -> None:
    """Reject specs libvirt would misread or refuse, with a message a user can act on."""
    if not vm.metadata.name:
        raise ValueError("metadata.name is empty")
    try:
        uuid.UUID(domain_uuid(vm))
    except ValueError:
        raise ValueError(f"instance uid {domain_uuid(vm)!r} is not a UUID") from None
    if vm.spec.vcpus < 1:
        raise ValueError(f"spec.vcpus must be at least 1, got {vm.spec.vcpus}")
    if vm.spec.memory_mib < 1:
        raise ValueError(f"spec.memory_mib must be at least 1, got {vm.spec.memory_mib}")
    source = vm.spec.boot.WhichOneof("source")
    if source is None:
        raise ValueError("spec.boot has neither kernel nor disk")
    if source == "kernel" and not vm.spec.boot.kernel.kernel_path:
        raise ValueError("spec.boot.kernel.kernel_path is empty")
    if source == "disk":
        if not vm.spec.boot.disk.image_path:
            raise ValueError("spec.boot.disk.image_path is empty")
        if vm.spec.boot.disk.format not in _DISK_FORMATS:
            # A probed format lets a guest turn a raw image into a qcow2 header pointing anywhere.
            raise ValueError("spec.boot.disk.format must be RAW or QCOW2 (never probed)")


def build_domain_xml(vm: vm_pb2.VirtualMachine, options: DomainOptions) -> str:
    """Return the domain XML for ``vm``; raises ValueError for an unusable spec."""
    validate(vm)
    domain = ET.Element("domain", type="qemu" if options.emulation else "kvm")
    _sub(domain, "name", vm.metadata.name)
    _sub(domain, "uuid", str(uuid.UUID(domain_uuid(vm))))
    _sub(domain, "memory", str(vm.spec.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(vm.spec.vcpus))

    os_el = _sub(domain, "os")
    _sub(os_el, "type", "hvm", arch="x86_64")
    boot = vm.spec.boot
    if boot.WhichOneof("source") == "kernel":
        _sub(os_el, "kernel", boot.kernel.kernel_path)
        if boot.kernel.initrd_path:
            _sub(os_el, "initrd", boot.kernel.initrd_path)
        if boot.kernel.cmdline:
            _sub(os_el, "cmdline", boot.kernel.cmdline)
    else:
        _sub(os_el, "boot", dev="hd")

    features = _sub(domain, "features")
    _sub(features, "acpi")  # Without ACPI, ShutdownDomain's power button does nothing.
    _sub(features, "apic")
    if not options.emulation:
        _sub(domain, "cpu", mode="host-passthrough")
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")

    devices = _sub(domain, "devices")
    if boot.WhichOneof("source") == "disk":
        disk = _sub(devices, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type=_DISK_FORMATS[boot.disk.format])
        _sub(disk, "source", file=boot.disk.image_path)
        _sub(disk, "target", dev="vda", bus="virtio")
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=options.serial_log_path, append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    _sub(devices, "memballoon", model="none")
    return ET.tostring(domain, encoding="unicode")
