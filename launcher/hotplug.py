"""Hotplug on the running domain: disks (virtio-scsi), vCPUs (setVcpusFlags) and memory (the
virtio-mem device's requested size, updateDeviceFlags).

Each change is made live only (the next run's domain is built from the VM's spec, which the
controller writes once the change took), and each is checked against what the guest shows:
a disk by its serial in the live XML, vCPUs by the guest agent's count of online CPUs, memory
by the virtio-mem device's <current> size (what the guest's driver plugged). A guest that does
not take vCPUs or memory within GUEST_TAKE_SECONDS has the change undone and the caller gets
GuestRefused (FAILED_PRECONDITION)."""
from __future__ import annotations

import logging
import time
import xml.etree.ElementTree as ET
from typing import Callable

import libvirt

from corral import hotplug
from corral.v1 import vm_pb2
from launcher import domain_xml
from launcher.host import DomainOperationFailed, LauncherError, classify

log = logging.getLogger(__name__)

LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
#: How long a detach waits for the disk to leave the live XML.
DETACH_SECONDS = 20.0


class GuestRefused(LauncherError):
    """The guest did not take the change in time (it was undone); the service's FAILED_PRECONDITION."""


class BadDevice(LauncherError):
    """A device the launcher will not attach or cannot find (a name clash, an unknown disk)."""


def _live_xml(domain: libvirt.virDomain) -> ET.Element:
    try:
        return ET.fromstring(domain.XMLDesc(0))
    except libvirt.libvirtError as e:
        raise classify(e) from e


def disk_by_serial(root: ET.Element, name: str) -> ET.Element | None:
    for disk in root.findall("devices/disk"):
        if disk.findtext("serial") == name:
            return disk
    return None


def free_target(root: ET.Element, prefix: str) -> str:
    """The first target name (sdb, sdc, ...) no disk of the live domain uses."""
    used = {disk.find("target").get("dev") for disk in root.findall("devices/disk") if disk.find("target") is not None}
    for index in range(0, 26 * 27):
        name = domain_xml.disk_target(index, prefix)
        if name not in used:
            return name
    raise BadDevice("no free disk target name")


def attach_disk(domain: libvirt.virDomain, disk: vm_pb2.Disk, *, block_device: bool) -> None:
    root = _live_xml(domain)
    if disk_by_serial(root, disk.name) is not None:
        raise BadDevice(f"the guest already has a disk named {disk.name!r}")
    try:
        xml = domain_xml.persistent_disk_xml(disk, target=free_target(root, "sd"), block_device=block_device)
    except ValueError as e:
        raise BadDevice(str(e)) from None
    try:
        domain.attachDeviceFlags(xml, LIVE)
    except libvirt.libvirtError as e:
        raise DomainOperationFailed(f"attaching disk {disk.name!r}: {e.get_error_message()}") from e
    log.info("disk %s attached", disk.name)


def detach_disk(domain: libvirt.virDomain, name: str) -> None:
    disk = disk_by_serial(_live_xml(domain), name)
    if disk is None:
        raise BadDevice(f"the guest has no disk named {name!r}")
    try:
        domain.detachDeviceFlags(ET.tostring(disk, encoding="unicode"), LIVE)
    except libvirt.libvirtError as e:
        raise DomainOperationFailed(f"detaching disk {name!r}: {e.get_error_message()}") from e
    if not _wait(lambda: disk_by_serial(_live_xml(domain), name) is None, DETACH_SECONDS, interval=0.05):
        raise GuestRefused(f"disk {name!r} is still attached {DETACH_SECONDS:.0f} s after the detach request")
    log.info("disk %s detached", name)


def _wait(done: Callable[[], bool], seconds: float, interval: float = 0.2) -> bool:
    end = time.monotonic() + seconds
    while True:
        if done():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(interval)


def online_vcpus(domain: libvirt.virDomain) -> int | None:
    """vCPUs the guest has online (its agent's answer); None when no agent answers."""
    try:
        info = domain.guestVcpus()
    except libvirt.libvirtError:
        return None
    if not isinstance(info, dict) or "online" not in info:
        return None
    return len(_cpu_list(str(info["online"])))


def _cpu_list(text: str) -> set[int]:
    """'0-2,4' -> {0, 1, 2, 4}."""
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def set_vcpus(domain: libvirt.virDomain, vcpus: int, *, wait_seconds: float = hotplug.GUEST_TAKE_SECONDS) -> int:
    """Plug or unplug vCPUs to ``vcpus``; returns how many the guest has online. With a guest
    agent the guest must show them online in time, else the change is undone (GuestRefused);
    without one, what the hypervisor has plugged is all that can be said."""
    try:
        before = domain.vcpusFlags(LIVE)
        if before != vcpus:
            domain.setVcpusFlags(vcpus, LIVE)
    except libvirt.libvirtError as e:
        raise DomainOperationFailed(f"setting {vcpus} vCPUs: {e.get_error_message()}") from e
    seen: list[int | None] = []

    def took() -> bool:
        seen.append(online_vcpus(domain))
        return seen[-1] == vcpus

    if _wait(took, wait_seconds, interval=0.1):
        return vcpus
    counts = [count for count in seen if count is not None]
    if not counts:
        log.warning("vCPUs set to %d; no guest agent answered, so the guest's view is not checked", vcpus)
        return vcpus
    seen_count = counts[-1]
    try:
        domain.setVcpusFlags(before, LIVE)
    except libvirt.libvirtError as e:
        log.error("could not undo the vCPU change back to %d: %s", before, e.get_error_message())
    raise GuestRefused(f"the guest has {seen_count} vCPUs online, not {vcpus}, after {wait_seconds:.0f} s; "
                       f"set back to {before}")


def _virtio_mem(root: ET.Element) -> ET.Element | None:
    for device in root.findall("devices/memory"):
        if device.get("model") == "virtio-mem":
            return device
    return None


def _mib(element: ET.Element | None) -> int:
    """A libvirt size element in MiB (libvirt reports KiB unless it says otherwise)."""
    if element is None or not element.text:
        return 0
    unit = {"KiB": 1 / 1024, "k": 1 / 1024, "MiB": 1, "M": 1, "GiB": 1024, "G": 1024, "b": 1 / 1048576,
            "bytes": 1 / 1048576}.get(element.get("unit", "KiB"), 1 / 1024)
    return int(int(element.text) * unit)


def memory_hotplug_domain(domain: libvirt.virDomain) -> bool:
    return _virtio_mem(_live_xml(domain)) is not None


def plugged_memory_mib(domain: libvirt.virDomain) -> tuple[int, int]:
    """(requested, current) MiB of the virtio-mem device: what was asked and what the guest plugged."""
    device = _virtio_mem(_live_xml(domain))
    if device is None:
        raise BadDevice("the domain has no virtio-mem device (the VM was created without max_memory_mib)")
    return _mib(device.find("target/requested")), _mib(device.find("target/current"))


def set_memory(domain: libvirt.virDomain, boot_memory_mib: int, memory_mib: int, *,
               wait_seconds: float = hotplug.GUEST_TAKE_SECONDS) -> int:
    """Ask the virtio-mem device for ``memory_mib - boot_memory_mib``; returns the guest's memory
    once its driver plugged that much, else undoes the request (GuestRefused)."""
    wanted = memory_mib - boot_memory_mib
    if wanted < 0 or wanted % hotplug.VIRTIO_MEM_BLOCK_MIB:
        raise BadDevice(f"memory must be at least {boot_memory_mib} MiB (what the run booted with) and differ "
                        f"from it by a multiple of {hotplug.VIRTIO_MEM_BLOCK_MIB} MiB, not {memory_mib}")
    before, _current = plugged_memory_mib(domain)
    _request(domain, wanted)
    if _wait(lambda: plugged_memory_mib(domain)[1] == wanted, wait_seconds, interval=0.05):
        return boot_memory_mib + wanted
    _requested, current = plugged_memory_mib(domain)
    try:
        _request(domain, before)
    except LauncherError as e:
        log.error("could not undo the memory request back to %d MiB: %s", before, e)
    raise GuestRefused(f"the guest plugged {current} of {wanted} MiB of hotplug memory within "
                       f"{wait_seconds:.0f} s (does it load virtio_mem?); the request is back to {before} MiB")


def _request(domain: libvirt.virDomain, requested_mib: int) -> None:
    device = _virtio_mem(_live_xml(domain))
    if device is None:
        raise BadDevice("the domain has no virtio-mem device")
    target = device.find("target")
    element = target.find("requested")
    element.text, element.attrib = str(requested_mib * 1024), {"unit": "KiB"}
    current = target.find("current")
    if current is not None:
        target.remove(current)
    try:
        domain.updateDeviceFlags(ET.tostring(device, encoding="unicode"), LIVE)
    except libvirt.libvirtError as e:
        raise DomainOperationFailed(f"setting the virtio-mem request to {requested_mib} MiB: "
                                    f"{e.get_error_message()}") from e
