"""What controller, handler and launcher agree on about disk snapshots: the tag a snapshot
has inside each qcow2 disk, and which of a VM's disks a snapshot holds."""
from __future__ import annotations

import re

from corral.v1 import vm_pb2

#: A snapshot's tag inside a qcow2 image: corral- and the snapshot's uid (never a user string).
TAG_RE = re.compile(r"corral-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: The name a snapshot gives a VM's boot disk (spec.boot.disk): not a DNS label, so no disk of
#: spec.disks can have it.
BOOT_DISK = ".boot"


def tag_for(snapshot_uid: str) -> str:
    return f"corral-{snapshot_uid}"


def valid_tag(tag: str) -> bool:
    return bool(TAG_RE.fullmatch(tag))


def writable_disks(vm: vm_pb2.VirtualMachine) -> dict[str, tuple[str, int, bool]]:
    """Every disk the guest keeps across runs: name -> (path, format, read-only): the boot disk
    (written in place) as BOOT_DISK, and the persistent disks."""
    disks: dict[str, tuple[str, int, bool]] = {}
    if vm.spec.boot.WhichOneof("source") == "disk":
        disks[BOOT_DISK] = (vm.spec.boot.disk.image_path, vm.spec.boot.disk.format, False)
    for disk in vm.spec.disks:
        if disk.WhichOneof("source") == "persistent":
            disks[disk.name] = (disk.persistent.path, disk.persistent.format, disk.read_only)
    return disks


def snapshot_disks(vm: vm_pb2.VirtualMachine) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """([(name, path)] a snapshot holds, disks left out with why, problems refusing it).

    The boot disk and writable persistent qcow2 disks are held; read-only ones are left out
    (the guest cannot change them); ephemeral disks are thrown away with each run (KubeVirt's
    containerDisks); a writable raw one refuses the snapshot: raw files cannot hold one, and a
    snapshot without it would not be the VM's state."""
    held, skipped, problems = [], [], []
    for name, (path, fmt, read_only) in writable_disks(vm).items():
        what = "the boot disk" if name == BOOT_DISK else f"disk {name!r}"
        if read_only:
            skipped.append(f"{name}: read-only")
        elif fmt != vm_pb2.DISK_FORMAT_QCOW2:
            problems.append(f"{what} is raw: snapshots need qcow2 disks "
                            f"(convert it with qemu-img convert -O qcow2 while the VM is stopped)")
        else:
            held.append((name, path))
    if not held and not problems:
        problems.append("it has no writable persistent disk to snapshot (ephemeral disks are "
                        "thrown away with each run)")
    return held, skipped, problems
