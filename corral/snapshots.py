"""What controller, handler and launcher agree on about disk snapshots: the tag a snapshot
has inside each qcow2 disk, and which of a VM's disks a snapshot holds."""
from __future__ import annotations

import re

from corral.v1 import vm_pb2

#: A snapshot's tag inside a qcow2 image: corral- and the snapshot's uid (never a user string).
TAG_RE = re.compile(r"corral-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def tag_for(snapshot_uid: str) -> str:
    return f"corral-{snapshot_uid}"


def valid_tag(tag: str) -> bool:
    return bool(TAG_RE.fullmatch(tag))


def snapshot_disks(vm: vm_pb2.VirtualMachine) -> tuple[list[vm_pb2.Disk], list[str], list[str]]:
    """(disks a snapshot holds, disks left out with why, problems refusing the snapshot).

    Writable persistent qcow2 disks are held; read-only ones are left out (the guest cannot
    change them); ephemeral disks are thrown away with each run (KubeVirt's containerDisks);
    a writable raw persistent disk refuses the snapshot: raw files cannot hold one, and a
    snapshot without it would not be the VM's state."""
    held, skipped, problems = [], [], []
    for disk in vm.spec.disks:
        if disk.WhichOneof("source") != "persistent":
            continue
        if disk.read_only:
            skipped.append(f"{disk.name}: read-only")
        elif disk.persistent.format != vm_pb2.DISK_FORMAT_QCOW2:
            problems.append(f"disk {disk.name!r} is raw: snapshots need qcow2 persistent disks "
                            f"(convert it with qemu-img convert -O qcow2 while the VM is stopped)")
        else:
            held.append(disk)
    if not held and not problems:
        problems.append("it has no writable persistent disk to snapshot (ephemeral disks are "
                        "thrown away with each run)")
    return held, skipped, problems
