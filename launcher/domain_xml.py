"""Pure translation of a ``corral.v1.VirtualMachine`` into libvirt domain XML.

Built with ElementTree, never by string formatting, so that names, kernel command
lines and paths taken from the user are always escaped by the serializer.
"""

from __future__ import annotations

import os
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from corral import fence_guard, hotplug, networks
from corral.rundir import CLOUD_INIT_SEED_FILE, cloud_init_seed_path, ephemeral_disk_path  # noqa: F401
from corral.validation import DNS1123_LABEL, MACHINE_TYPE
from corral.v1 import vm_pb2

#: libvirt's QEMU namespace: the user network's slirp netdev (with hostfwd) goes on QEMU's
#: command line, because libvirt 9.0 refuses <portForward> without passt (see README).
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)
#: The user network's NIC: a PCI slot libvirt's own (sequential, from 2) assignment does not reach.
USER_NET_PCI_SLOT = "0x1f"
USER_NETDEV_ID = "corral-user"
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"

#: q35's pcie.0 has the ICH9 LPC, SATA and SMBus functions at slot 0x1f: the NIC takes 0x1e there.
Q35_USER_NET_PCI_SLOT = "0x1e"
#: Each disk bus: libvirt's bus name and the guest device names' prefix.
_DISK_BUSES: dict[int, tuple[str, str]] = {
    vm_pb2.DISK_BUS_UNSPECIFIED: ("virtio", "vd"),
    vm_pb2.DISK_BUS_VIRTIO: ("virtio", "vd"),
    vm_pb2.DISK_BUS_SCSI: ("scsi", "sd"),
    vm_pb2.DISK_BUS_SATA: ("sata", "sd"),
}
#: Huge page sizes in KiB, as libvirt's <page unit='KiB'>.
_HUGEPAGE_KIB = {"2Mi": 2048, "1Gi": 1024 * 1024}

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
    # The guest agent's unix socket (libvirt's own choice below an embed root is longer than
    # a unix socket path may be); empty: libvirt picks it.
    agent_socket_path: str = ""
    # The run's directory: where the handler put ephemeral disks' overlays and the cloud-init
    # seed (see ephemeral_disk_path, cloud_init_seed_path); needed by VMs that have them.
    run_dir: str = ""
    # Persistent disk paths that are block devices (<disk type='block'>); the rest are files.
    block_devices: frozenset[str] = field(default_factory=frozenset)
    # The fence guard library and the node's deadline file it obeys (corral/fence_guard.py):
    # both set, QEMU ends itself once the deadline passes.
    fence_guard: str = ""
    fence_file: str = ""
    # Host CPUs the node gave a VM with dedicated_cpu_placement, one per vCPU (vCPU i is pinned
    # to cpuset[i]); empty: not pinned.
    cpuset: tuple[int, ...] = ()
    # QEMU's VNC server on this unix socket (never a TCP port), with a VGA card for it to
    # show; empty (or spec.headless): no display at all.
    vnc_socket_path: str = ""


def disk_target(index: int, prefix: str = "vd") -> str:
    """Target of extra disk `index` (0 -> vdb, 25 -> vdaa): vda is the boot disk's; ``prefix``
    "sd" for SCSI and SATA disks."""
    number, letters = index + 2, ""
    while number > 0:
        number, rest = divmod(number - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return prefix + letters


def is_q35(machine_type: str) -> bool:
    return machine_type == "q35" or machine_type.startswith("pc-q35-")


def disk_bus(vm: vm_pb2.VirtualMachine) -> tuple[str, str]:
    """(libvirt bus, device name prefix) of the VM's disks."""
    return _DISK_BUSES[vm.spec.disk_bus]


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = text
    return element


def domain_uuid(vm: vm_pb2.VirtualMachine) -> str:
    """Each run of a VM is its own domain: the instance uid, else (older handlers) the VM's.
    A run that resumes a saved guest keeps the saved run's uuid (libvirt refuses another)."""
    return vm.status.restore_from.instance_uid or vm.status.instance_uid or vm.metadata.uid


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


    # Again here: the user network's MAC and ports go on QEMU's command line.
    users = 0
    for index, network in enumerate(vm.spec.networks):
        if network.mac_address and not networks.mac_ok(network.mac_address):
            raise ValueError(f"spec.networks[{index}].mac_address {network.mac_address!r} is not a unicast MAC")
        binding = network.WhichOneof("binding")
        if binding == "bridge" and not networks.ifname_ok(network.bridge.bridge):
            raise ValueError(f"spec.networks[{index}].bridge.bridge {network.bridge.bridge!r} is not an interface name")
        if binding == "user":
            users += 1
            for forward in network.user.port_forwards:
                if (forward.protocol not in networks.PROTOCOL_NAMES
                        or not 1 <= forward.node_port <= 65535 or not 1 <= forward.guest_port <= 65535):
                    raise ValueError(f"spec.networks[{index}] has an invalid port forward")
        elif binding is None:
            raise ValueError(f"spec.networks[{index}] has no binding")
    if users > 1:
        raise ValueError("at most one user network is supported")
    _validate_sizing(vm.spec)


def _validate_sizing(spec: vm_pb2.VirtualMachineSpec) -> None:
    """Machine type, firmware, disk bus, CPU topology, huge pages: again here, since they become
    attributes libvirt and QEMU act on."""
    if spec.machine_type and not MACHINE_TYPE.match(spec.machine_type):
        raise ValueError(f"spec.machine_type {spec.machine_type!r} is not a machine type Corral knows")
    if spec.firmware not in (vm_pb2.FIRMWARE_UNSPECIFIED, vm_pb2.FIRMWARE_BIOS, vm_pb2.FIRMWARE_UEFI):
        raise ValueError(f"spec.firmware {spec.firmware} is unknown")
    if spec.disk_bus not in _DISK_BUSES:
        raise ValueError(f"spec.disk_bus {spec.disk_bus} is unknown")
    if spec.HasField("cpu_topology"):
        top = spec.cpu_topology
        wanted = hotplug.max_vcpus(spec)
        if min(top.sockets, top.cores, top.threads) < 1 or top.sockets * top.cores * top.threads != wanted:
            raise ValueError(f"spec.cpu_topology {top.sockets}x{top.cores}x{top.threads} does not make "
                             f"{wanted} vCPUs")
    if spec.HasField("hugepages") and spec.hugepages.page_size not in _HUGEPAGE_KIB:
        raise ValueError(f"spec.hugepages.page_size {spec.hugepages.page_size!r} is not 2Mi or 1Gi")

def build_domain_xml(vm: vm_pb2.VirtualMachine, options: DomainOptions) -> str:
    """Return the domain XML for ``vm``; raises ValueError for an unusable spec."""
    validate(vm)
    domain = ET.Element("domain", type="qemu" if options.emulation else "kvm")
    _sub(domain, "name", vm.metadata.name)
    _sub(domain, "uuid", str(uuid.UUID(domain_uuid(vm))))
    _sub(domain, "memory", str(vm.spec.memory_mib), unit="MiB")
    if vm.spec.HasField("hugepages"):
        backing = _sub(_sub(domain, "memoryBacking"), "hugepages")
        _sub(backing, "page", size=str(_HUGEPAGE_KIB[vm.spec.hugepages.page_size]), unit="KiB")
    vcpu = _sub(domain, "vcpu", str(hotplug.max_vcpus(vm.spec)))
    if hotplug.max_vcpus(vm.spec) > vm.spec.vcpus:
        vcpu.set("current", str(vm.spec.vcpus))  # the rest are plugged later (ResizeDomain)
    _add_cpu_pinning(vm, domain, options)

    os_el = _sub(domain, "os")
    if vm.spec.firmware == vm_pb2.FIRMWARE_UEFI:
        os_el.set("firmware", "efi")
    machine = {"machine": vm.spec.machine_type} if vm.spec.machine_type else {}
    _sub(os_el, "type", "hvm", arch="x86_64", **machine)
    if vm.spec.firmware == vm_pb2.FIRMWARE_UEFI:
        # Plain OVMF: secure boot would need SMM and signed kernels.
        _sub(_sub(os_el, "firmware"), "feature", enabled="no", name="secure-boot")
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
    cpu = None if options.emulation else _sub(domain, "cpu", mode="host-passthrough")
    if vm.spec.HasField("cpu_topology"):
        top = vm.spec.cpu_topology
        cpu = cpu if cpu is not None else _sub(domain, "cpu")
        _sub(cpu, "topology", sockets=str(top.sockets), dies="1", cores=str(top.cores), threads=str(top.threads))
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")

    devices = _sub(domain, "devices")
    bus, prefix = disk_bus(vm)
    # Always: disks added to a running VM go on it (one controller, no PCI slot per disk).
    _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    if boot.WhichOneof("source") == "disk":
        disk = _sub(devices, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type=_DISK_FORMATS[boot.disk.format])
        _sub(disk, "source", file=boot.disk.image_path)
        _sub(disk, "target", dev=prefix + "a", bus=bus)
    _add_disks(vm, devices, options)
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=options.serial_log_path, append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    _add_networks(vm, domain, devices)
    _add_fence_guard(domain, options)
    channel = _sub(devices, "channel", type="unix")
    if options.agent_socket_path:
        _sub(channel, "source", mode="bind", path=options.agent_socket_path)
    _sub(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)
    if options.vnc_socket_path and not vm.spec.headless:
        _sub(devices, "graphics", type="vnc", socket=options.vnc_socket_path)
        _sub(_sub(devices, "video"), "model", type="vga")
    _sub(devices, "memballoon", model="none")
    _add_hotplug(vm, domain, devices)
    return ET.tostring(domain, encoding="unicode")


def _qemu_commandline(domain: ET.Element) -> ET.Element:
    """The domain's one <qemu:commandline> element (made on first use)."""
    found = domain.find(f"{{{QEMU_NS}}}commandline")
    return found if found is not None else ET.SubElement(domain, f"{{{QEMU_NS}}}commandline")


def _add_fence_guard(domain: ET.Element, options: DomainOptions) -> None:
    if not (options.fence_guard and options.fence_file):
        return
    commandline = _qemu_commandline(domain)
    for name, value in ((fence_guard.PRELOAD_ENV, options.fence_guard),
                        (fence_guard.FENCE_FILE_ENV, options.fence_file)):
        ET.SubElement(commandline, f"{{{QEMU_NS}}}env", name=name, value=value)


def _add_networks(vm: vm_pb2.VirtualMachine, domain: ET.Element, devices: ET.Element) -> None:
    """Bridge networks: a tap the handler made (owned by the run's user) that QEMU opens,
    KubeVirt's pattern. The user network: QEMU's slirp with hostfwd, on the command line."""
    for index, network in enumerate(vm.spec.networks):
        mac = networks.mac_for(vm, network)
        if network.WhichOneof("binding") == "bridge":
            interface = _sub(devices, "interface", type="ethernet")
            _sub(interface, "target", dev=networks.tap_name(networks.run_uid(vm), index), managed="no")
            _sub(interface, "mac", address=mac)
            _sub(interface, "model", type="virtio")
        elif network.WhichOneof("binding") == "user":
            commandline = _qemu_commandline(domain)
            # QEMU's -device syntax, not a shell line; the MAC was checked (validate).
            root, slot = (("pcie.0", Q35_USER_NET_PCI_SLOT) if is_q35(vm.spec.machine_type)
                          else ("pci.0", USER_NET_PCI_SLOT))
            device = f"virtio-net-pci,netdev={USER_NETDEV_ID},mac={mac},bus={root},addr={slot}"
            for value in ("-netdev", networks.hostfwd_netdev(USER_NETDEV_ID, network), "-device", device):
                ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", value=value)


def _add_disks(vm: vm_pb2.VirtualMachine, devices: ET.Element, options: DomainOptions) -> None:
    """Extra disks in spec order (vdb, ...; the guest sees each name as the disk's serial), then
    the cloud-init seed, read-only. Ephemeral disks are the run's overlays (their backing base
    and its format are recorded in the overlay, never probed); persistent ones their paths."""
    needs_run_dir = len(vm.spec.disks) > 0 or vm.spec.HasField("cloud_init")
    if needs_run_dir and not options.run_dir:
        raise ValueError("disks and cloud-init need the run's directory (DomainOptions.run_dir)")
    bus, prefix = disk_bus(vm)
    index = -1
    for index, spec in enumerate(vm.spec.disks):
        if not DNS1123_LABEL.match(spec.name):
            raise ValueError(f"spec.disks[{index}].name {spec.name!r} is not a DNS label")
        source = spec.WhichOneof("source")
        if source == "ephemeral":
            kind, fmt, path = "file", "qcow2", ephemeral_disk_path(options.run_dir, spec.name)
        elif source == "persistent":
            if spec.persistent.format not in _DISK_FORMATS:
                raise ValueError(f"spec.disks[{index}].persistent.format must be RAW or QCOW2 (never probed)")
            path, fmt = spec.persistent.path, _DISK_FORMATS[spec.persistent.format]
            kind = "block" if path in options.block_devices else "file"
        else:
            raise ValueError(f"spec.disks[{index}] has no source")
        own_bus, own_prefix = _DISK_BUSES[spec.bus] if spec.bus else (bus, prefix)
        disk_element(devices, spec, path=path, kind=kind, fmt=fmt, target=disk_target(index, own_prefix), bus=own_bus)
    if vm.spec.HasField("cloud_init"):
        seed = _sub(devices, "disk", type="file", device="disk")
        _sub(seed, "driver", name="qemu", type="raw")
        _sub(seed, "source", file=cloud_init_seed_path(options.run_dir))
        _sub(seed, "target", dev=disk_target(index + 1, prefix), bus=bus)
        _sub(seed, "readonly")


def disk_element(devices: ET.Element, spec: vm_pb2.Disk, *, path: str, kind: str, fmt: str, target: str,
                 bus: str) -> ET.Element:
    """One <disk>: the guest sees spec.name as its serial (hotplug detaches by it too)."""
    disk = _sub(devices, "disk", type=kind, device="disk")
    _sub(disk, "driver", name="qemu", type=fmt)
    _sub(disk, "source", **({"dev": path} if kind == "block" else {"file": path}))
    _sub(disk, "target", dev=target, bus=bus)
    _sub(disk, "serial", spec.name)
    if spec.read_only:
        _sub(disk, "readonly")
    return disk


def persistent_disk_xml(spec: vm_pb2.Disk, *, target: str, block_device: bool) -> str:
    """A persistent disk as a device XML to attach live (on its own bus, SCSI unless set)."""
    if spec.WhichOneof("source") != "persistent" or spec.persistent.format not in _DISK_FORMATS:
        raise ValueError(f"disk {spec.name!r}: only a persistent disk with a RAW or QCOW2 format can be attached")
    if not DNS1123_LABEL.match(spec.name):
        raise ValueError(f"disk name {spec.name!r} is not a DNS label")
    bus = _DISK_BUSES[spec.bus or vm_pb2.DISK_BUS_SCSI][0]
    holder = ET.Element("devices")
    element = disk_element(holder, spec, path=spec.persistent.path, kind="block" if block_device else "file",
                           fmt=_DISK_FORMATS[spec.persistent.format], target=target, bus=bus)
    return ET.tostring(element, encoding="unicode")


def _add_hotplug(vm: vm_pb2.VirtualMachine, domain: ET.Element, devices: ET.Element) -> None:
    """vCPUs plugged up to max_vcpus (<vcpu current=vcpus>max</vcpu>, set by the caller) and
    a virtio-mem device for memory up to max_memory_mib: it needs a NUMA cell holding the boot
    memory and <maxMemory>; its <requested> size is what ResizeDomain changes."""
    if not hotplug.memory_hotplug(vm.spec):
        return
    size = hotplug.virtio_mem_size_mib(vm.spec)
    memory = domain.find("memory")
    index = list(domain).index(memory)
    max_memory = ET.Element("maxMemory", slots="1", unit="MiB")
    max_memory.text = str(vm.spec.memory_mib + size)
    domain.insert(index, max_memory)
    cpu = domain.find("cpu")
    if cpu is None:
        cpu = ET.Element("cpu")
        domain.insert(list(domain).index(domain.find("clock")), cpu)
    numa = _sub(cpu, "numa")
    _sub(numa, "cell", id="0", cpus=f"0-{hotplug.max_vcpus(vm.spec) - 1}", memory=str(vm.spec.memory_mib), unit="MiB")
    device = _sub(devices, "memory", model="virtio-mem")
    target = _sub(device, "target")
    _sub(target, "size", str(size), unit="MiB")
    _sub(target, "node", "0")
    _sub(target, "block", str(hotplug.VIRTIO_MEM_BLOCK_MIB), unit="MiB")
    _sub(target, "requested", "0", unit="MiB")


def _add_cpu_pinning(vm: vm_pb2.VirtualMachine, domain: ET.Element, options: DomainOptions) -> None:
    """Dedicated CPUs: vCPU i on host CPU cpuset[i] (KubeVirt's dedicatedCpuPlacement), when
    the node gave the run its CPUs."""
    if not (vm.spec.dedicated_cpu_placement and options.cpuset):
        return
    if len(options.cpuset) < vm.spec.vcpus or len(set(options.cpuset)) != len(options.cpuset):
        raise ValueError(f"dedicated CPUs: {vm.spec.vcpus} vCPUs need as many distinct host CPUs, "
                         f"got {list(options.cpuset)}")
    cputune = _sub(domain, "cputune")
    for vcpu in range(vm.spec.vcpus):
        _sub(cputune, "vcpupin", vcpu=str(vcpu), cpuset=str(int(options.cpuset[vcpu])))
