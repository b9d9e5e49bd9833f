"""Disk snapshots of the running guest: qcow2 internal snapshots taken by QEMU itself.

Why internal snapshots through QEMU (QMP ``blockdev-snapshot-internal-sync`` in one
``transaction``) rather than libvirt's external disk-only snapshot: the disk named in the VM
spec stays the live disk (nothing to commit or pivot back, no overlay that a crash in the
middle would leave the guest running on), every disk of the VM is snapshotted at one instant
(the transaction), and a stopped VM's snapshots are the same objects (``qemu-img snapshot``
on the handler's side), so restore and delete need no knowledge of how a snapshot was taken.
libvirt has no API for internal disk-only snapshots of a running domain, hence QMP.

The launcher runs as the VM's user and talks to its own libvirt: nothing here is root.
When the guest agent answers, the guest's file systems are frozen (``fsFreeze``) around the
snapshot and thawed in every case; when it does not, the snapshot is crash-consistent and
says so (indication NoGuestAgent), as KubeVirt's does."""
from __future__ import annotations

import json
import logging

import libvirt
import libvirt_qemu

from corral.snapshots import writable_disks
from corral.v1 import vm_pb2

log = logging.getLogger(__name__)

#: Seconds libvirt waits for the guest agent's freeze/thaw answer.
FREEZE_TIMEOUT_SECONDS = 10
ONLINE, GUEST_AGENT, NO_GUEST_AGENT = "Online", "GuestAgent", "NoGuestAgent"


class SnapshotError(Exception):
    """The snapshot cannot be taken or deleted; str() says which disk and why."""


def disk_paths(vm: vm_pb2.VirtualMachine, names: list[str]) -> dict[str, str]:
    """The launcher's (resolved) path of each named disk, which must be a writable qcow2
    persistent disk (or the boot disk) of its VM; the handler's request names disks, never paths."""
    disks = writable_disks(vm)
    paths: dict[str, str] = {}
    for name in names:
        if name not in disks:
            raise SnapshotError(f"disk {name!r} is not a persistent disk of this VM")
        path, fmt, read_only = disks[name]
        if read_only:
            raise SnapshotError(f"disk {name!r} is read-only")
        if fmt != vm_pb2.DISK_FORMAT_QCOW2:
            raise SnapshotError(f"disk {name!r} is not qcow2: only qcow2 disks hold snapshots")
        paths[name] = path
    if not paths:
        raise SnapshotError("no disks named")
    return paths


def _qmp(domain: libvirt.virDomain, command: str, **arguments) -> object:
    message = {"execute": command, **({"arguments": arguments} if arguments else {})}
    try:
        answer = json.loads(libvirt_qemu.qemuMonitorCommand(domain, json.dumps(message), 0))
    except libvirt.libvirtError as exc:
        raise SnapshotError(f"QEMU {command}: {exc.get_error_message()}") from None
    if "error" in answer:
        raise SnapshotError(f"QEMU {command}: {answer['error'].get('desc', answer['error'])}")
    return answer.get("return")


def block_nodes(domain: libvirt.virDomain, paths: dict[str, str]) -> dict[str, tuple[str, set[str]]]:
    """For each disk name: (QEMU's root node name of its image, the internal snapshot tags it
    holds), found by matching the image file in ``query-block``."""
    found: dict[str, tuple[str, set[str]]] = {}
    for device in _qmp(domain, "query-block") or []:
        inserted = device.get("inserted") or {}
        image = inserted.get("image") or {}
        for name, path in paths.items():
            if inserted.get("file") == path or image.get("filename") == path:
                tags = {s.get("name", "") for s in image.get("snapshots") or []}
                found[name] = (inserted.get("node-name") or device.get("device"), tags)
    missing = sorted(set(paths) - set(found))
    if missing:
        raise SnapshotError(f"QEMU has no open image for disk(s) {', '.join(missing)}")
    return found


def _freeze(domain: libvirt.virDomain) -> tuple[bool, str]:
    """Freeze the guest's file systems; (frozen, why not)."""
    try:
        domain.agentSetResponseTimeout(FREEZE_TIMEOUT_SECONDS, 0)
        count = domain.fsFreeze(None, 0)
        return True, f"{count} file system(s) frozen"
    except libvirt.libvirtError as exc:
        return False, f"the guest agent did not freeze the file systems: {exc.get_error_message()}"


def _thaw(domain: libvirt.virDomain) -> None:
    for attempt in (1, 2):
        try:
            domain.fsThaw(None, 0)
            return
        except libvirt.libvirtError as exc:
            log.warning("thaw attempt %d failed: %s", attempt, exc.get_error_message())


def take(domain: libvirt.virDomain, vm: vm_pb2.VirtualMachine, tag: str, names: list[str], *,
         freeze: bool = True) -> tuple[list[str], str]:
    """Snapshot the named disks as ``tag`` (a disk that holds it already is left alone);
    returns (indications, why the file systems were not frozen)."""
    paths = disk_paths(vm, names)
    nodes = block_nodes(domain, paths)
    todo = {name: node for name, (node, tags) in nodes.items() if tag not in tags}
    if not todo:
        return [ONLINE], ""
    if not freeze:
        frozen, note = False, "freezing was not asked for"
    elif domain.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
        # A paused guest cannot answer; a freeze it ran after being resumed would never be thawed.
        frozen, note = False, "the guest is paused: its file systems were not frozen"
    else:
        frozen, note = _freeze(domain)
    try:
        actions = [{"type": "blockdev-snapshot-internal-sync", "data": {"device": node, "name": tag}}
                   for node in todo.values()]
        _qmp(domain, "transaction", actions=actions)
    finally:
        if frozen or "not responding" in note:  # a late freeze must not outlive the call
            _thaw(domain)
    log.info("internal snapshot %s of %s taken (%s)", tag, ", ".join(sorted(todo)), note)
    return [ONLINE, GUEST_AGENT if frozen else NO_GUEST_AGENT], "" if frozen else note


def delete(domain: libvirt.virDomain, vm: vm_pb2.VirtualMachine, tag: str, names: list[str]) -> None:
    """Remove ``tag`` from the named disks; a disk without it is left alone."""
    paths = disk_paths(vm, names)
    for name, (node, tags) in block_nodes(domain, paths).items():
        if tag in tags:
            _qmp(domain, "blockdev-snapshot-delete-internal-sync", device=node, name=tag)
            log.info("internal snapshot %s of disk %s deleted", tag, name)
