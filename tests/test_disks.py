"""Disks and cloud-init on real guests through a real cluster (etcd, controller, handler,
launchers, QEMU under TCG). One cluster for the module; one VM with every kind of disk and a
user-data script runs twice (its first run writes and powers off, RunStrategy Always starts a
second that reads back), the other cases need no boot: the node refuses them before a launcher.

The test guest (scripts/build-guest.sh) mounts each virtio disk with a serial at /mnt/SERIAL,
prints the seed's user-data between markers and runs it when it starts with "#!"."""
from __future__ import annotations

import grp
import hashlib
import json
import os
import subprocess
import uuid
from pathlib import Path

import grpc
import pytest

from corral.v1 import vm_pb2
from handler.launchers import vm_dir_for
from launcher.domain_xml import ephemeral_disk_path
from tests.cluster import Cluster, wait_for

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
FAILED = vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED
RAW, QCOW2 = vm_pb2.DISK_FORMAT_RAW, vm_pb2.DISK_FORMAT_QCOW2

# Markers are computed ($((1 + 1))): the guest prints the user-data itself too.
USER_DATA = """#!/bin/sh
# Run by the test guest at every boot (the guest's stand-in for cloud-init's user scripts).
cat /mnt/cidata/meta-data
for d in /sys/block/vd*; do [ "$(cat $d/serial)" = ro ] && rodev=/dev/${d##*/}; done
if [ -f /mnt/data/runs ]; then
    echo "DATA=$(cat /mnt/data/runs)"
    echo "SCRATCH-LEFTOVER=$(cat /mnt/scratch/written 2>/dev/null || echo none)"
    echo "BASE=$(cat /mnt/scratch/hello)"
    echo "RO-CONTENT=$(cat /mnt/ro/hello)"
    echo "BLOCK=$(cat /mnt/blk/runs 2>/dev/null || echo none)"
    if echo x > /mnt/ro/new 2>/dev/null; then echo RO-FILE-WRITE=ok; else echo RO-FILE-WRITE=refused; fi
    if dd if=/dev/zero of=$rodev bs=512 count=1 2>/dev/null; then echo RO-DEV-WRITE=ok; else echo RO-DEV-WRITE=refused; fi
    echo "SECOND-RUN-DONE=$((1 + 1))"
else
    echo first-run > /mnt/data/runs
    echo ephemeral > /mnt/scratch/written
    [ -d /mnt/blk ] && echo block-first-run > /mnt/blk/runs
    sync; umount /mnt/data; umount /mnt/scratch; umount /mnt/blk 2>/dev/null
    echo "FIRST-RUN-DONE=$((1 + 1))"
    poweroff -f
fi
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ext4_image(path: Path, files: dict[str, str] | None = None) -> None:
    """A 16 MiB raw image with an ext4 file system holding `files`."""
    content = path.with_suffix(".d")
    content.mkdir()
    for name, text in (files or {}).items():
        (content / name).write_text(text)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(path), "16M"], check=True)
    os.chmod(path, 0o644)  # base images must be readable by the VMs' users


def loop_device(image: Path) -> Path | None:
    """A loop device on `image` (a persistent disk that is a block device), if this host has them."""
    try:
        result = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else None


@pytest.fixture(scope="module")
def node(etcd, guest_dir, tmp_path_factory):
    """A controller and one handler whose allowed roots hold the test's images and disks (and
    a loop device: a root may name a single device)."""
    cluster = Cluster(etcd=etcd, base=tmp_path_factory.mktemp("disks"), prefix=f"/t-{uuid.uuid4().hex[:8]}/",
                      guest_dir=guest_dir)
    root = cluster.node_root
    dirs = {name: root / name for name in ("images", "disks", "elsewhere")}
    for path in dirs.values():
        path.mkdir()
    ext4_image(dirs["elsewhere"] / "block.img")
    block = loop_device(dirs["elsewhere"] / "block.img")
    disk_roots = ",".join([str(dirs["disks"]), *([str(block)] if block else [])])
    try:
        cluster.start_controller()
        cluster.start_handler("n1", extra=["--image-roots", f"{dirs['images']},{guest_dir}", "--disk-roots", disk_roots])
        yield cluster, {**dirs, "block": block}
    finally:
        cluster.close()
        if block is not None:
            subprocess.run(["losetup", "--detach", str(block)], check=False)
            os.chown(block, 0, grp.getgrnam("disk").gr_gid)  # as udev leaves loop devices


def disk_vm(cluster: Cluster, name: str, *disks: vm_pb2.Disk, strategy: int = vm_pb2.RUN_STRATEGY_ONCE,
            user_data: str | None = None) -> vm_pb2.VirtualMachine:
    vm = cluster.guest_vm(name)
    vm.spec.run_strategy = strategy
    vm.spec.disks.extend(disks)
    if user_data is not None:
        vm.spec.cloud_init.user_data = user_data
    return vm


def persistent(name: str, path: Path, fmt: int = RAW, read_only: bool = False) -> vm_pb2.Disk:
    return vm_pb2.Disk(name=name, persistent=vm_pb2.PersistentDisk(path=str(path), format=fmt), read_only=read_only)


def serial(vm: vm_pb2.VirtualMachine) -> str:
    path = Path(vm.status.serial_log_path)
    return path.read_bytes().decode(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def two_runs(node):
    """The VM with an ephemeral, a persistent and a read-only disk and a user-data script,
    followed through its two runs; what was seen on the way."""
    cluster, dirs = node
    base = dirs["images"] / "base.img"
    ext4_image(base, {"hello": "from-base"})
    ext4_image(dirs["disks"] / "data.img")
    ext4_image(dirs["disks"] / "ro.img", {"hello": "read-only"})
    seen = {"base_hash": sha256(base), "ro_hash": sha256(dirs["disks"] / "ro.img")}
    vm = disk_vm(cluster, "disky",
                 vm_pb2.Disk(name="scratch", ephemeral=vm_pb2.EphemeralDisk(base_image_path=str(base), base_format=RAW)),
                 persistent("data", dirs["disks"] / "data.img"),
                 persistent("ro", dirs["disks"] / "ro.img", read_only=True),
                 *([persistent("blk", dirs["block"])] if dirs["block"] else []),
                 strategy=vm_pb2.RUN_STRATEGY_ALWAYS, user_data=USER_DATA)
    seen["block"] = dirs["block"]
    created = cluster.create(vm)
    first = wait_for(lambda: (v := cluster.get("disky")).status.serial_log_path and "FIRST-RUN-DONE=2" in serial(v) and v,
                     timeout=120, what="the first run to write its disks")
    seen["first"] = first
    seen["first_serial"] = serial(first)
    seen["first_dir"] = vm_dir_for(cluster.state_dir("n1"), first.status.instance_uid)
    second = wait_for(lambda: (v := cluster.get("disky")).status.instance_uid != first.status.instance_uid
                      and "SECOND-RUN-DONE=2" in serial(v) and v, timeout=120, what="the second run to read back")
    seen["second"] = second
    seen["second_serial"] = serial(second)
    seen["second_dir"] = vm_dir_for(cluster.state_dir("n1"), second.status.instance_uid)
    overlay = Path(ephemeral_disk_path(str(seen["second_dir"]), "scratch"))
    seen["overlay_exists"] = overlay.exists()
    seen["overlay_info"] = json.loads(subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", "-f", "qcow2", str(overlay)], capture_output=True, check=True).stdout)
    seen["overlay_owner"] = overlay.stat().st_uid
    seen["dir_owner"] = seen["second_dir"].stat().st_uid
    seen["uid"] = created.metadata.uid
    cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="disky"), timeout=10)
    wait_for(lambda: not seen["second_dir"].exists(), timeout=60, what="the run's directory to go")
    seen["base_hash_after"] = sha256(base)
    seen["ro_hash_after"] = sha256(dirs["disks"] / "ro.img")
    return seen


def test_cloud_init_user_data_and_meta_data_reach_the_guest(two_runs):
    text = two_runs["first_serial"]
    begin, end = text.index("CORRAL-USER-DATA-BEGIN"), text.index("CORRAL-USER-DATA-END")
    assert USER_DATA.strip() in text[begin:end].replace("\r\n", "\n")
    assert f'"instance-id": "{two_runs["uid"]}"' in text
    assert '"local-hostname": "disky"' in text


def test_persistent_disk_survives_a_new_run(two_runs):
    assert "DATA=first-run" in two_runs["second_serial"]


def test_ephemeral_disk_is_a_fresh_overlay_per_run_and_the_base_is_never_written(two_runs):
    assert "BASE=from-base" in two_runs["second_serial"]
    assert "SCRATCH-LEFTOVER=none" in two_runs["second_serial"]
    info = two_runs["overlay_info"]
    assert info["backing-filename-format"] == "raw" and info["backing-filename"].endswith("/images/base.img")
    assert two_runs["overlay_owner"] == two_runs["dir_owner"]  # the run's own user
    assert not two_runs["first_dir"].exists(), "the first run's directory (and overlay) outlived it"
    assert two_runs["base_hash_after"] == two_runs["base_hash"]


def test_persistent_block_device_survives_a_new_run(two_runs):
    if two_runs["block"] is None:
        pytest.skip("no loop devices on this host")
    assert "BLOCK=block-first-run" in two_runs["second_serial"]


def test_read_only_disk_cannot_be_written(two_runs):
    text = two_runs["second_serial"]
    assert "RO-CONTENT=read-only" in text
    assert "RO-FILE-WRITE=refused" in text and "RO-DEV-WRITE=refused" in text
    assert two_runs["ro_hash_after"] == two_runs["ro_hash"]


def failure_message(cluster: Cluster, name: str) -> str:
    vm = cluster.wait_phase(name, FAILED, timeout=30)
    ready = [c for c in vm.status.conditions if c.type == "Ready"]
    assert ready and ready[0].reason == "DiskUnavailable", vm.status.conditions
    return ready[0].message


def test_node_refuses_a_symlink_out_of_the_disk_roots(node):
    cluster, dirs = node
    (dirs["elsewhere"] / "secret.img").write_bytes(b"\0" * 65536)
    os.symlink(dirs["elsewhere"] / "secret.img", dirs["disks"] / "escape.img")
    cluster.create(disk_vm(cluster, "escape", persistent("data", dirs["disks"] / "escape.img")))
    message = failure_message(cluster, "escape")
    assert "outside this node's allowed directories" in message and "secret.img" in message


def test_node_refuses_a_base_image_outside_the_image_roots(node):
    cluster, dirs = node
    (dirs["disks"] / "not-an-image-root.img").write_bytes(b"\0" * 65536)
    cluster.create(disk_vm(cluster, "wrong-root", vm_pb2.Disk(name="scratch", ephemeral=vm_pb2.EphemeralDisk(
        base_image_path=str(dirs["disks"] / "not-an-image-root.img"), base_format=RAW))))
    assert "outside this node's allowed directories" in failure_message(cluster, "wrong-root")


def test_node_refuses_qcow2_with_a_backing_file(node):
    cluster, dirs = node
    (dirs["elsewhere"] / "host-secret").write_bytes(b"\0" * 65536)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(dirs["elsewhere"] / "host-secret"),
                    str(dirs["disks"] / "backed.qcow2")], check=True)
    cluster.create(disk_vm(cluster, "backed", persistent("data", dirs["disks"] / "backed.qcow2", QCOW2)))
    assert "has a backing file" in failure_message(cluster, "backed")


def test_node_refuses_qcow2_with_a_data_file(node):
    cluster, dirs = node
    (dirs["elsewhere"] / "raw-device").write_bytes(b"\0" * 65536)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={dirs['elsewhere'] / 'raw-device'}",
                    str(dirs["disks"] / "datafile.qcow2"), "64K"], check=True)
    cluster.create(disk_vm(cluster, "datafile", persistent("data", dirs["disks"] / "datafile.qcow2", QCOW2)))
    assert "has a qcow2 data-file" in failure_message(cluster, "datafile")


def test_node_refuses_a_missing_disk(node):
    cluster, dirs = node
    cluster.create(disk_vm(cluster, "missing", persistent("data", dirs["disks"] / "nope.img")))
    assert "does not exist on this node" in failure_message(cluster, "missing")


@pytest.mark.parametrize("mutate, expected", [
    (lambda vm: vm.spec.disks.add(name="data", persistent=vm_pb2.PersistentDisk(path="/var/lib/corral/disks/a")),
     "spec.disks[0].persistent.format must be given"),
    (lambda vm: setattr(vm.spec.cloud_init, "user_data", "#" * (64 * 1024 + 1)),
     "spec.cloud_init.user_data is 65537 bytes"),
])
def test_api_refuses_bad_disks_and_cloud_init(node, mutate, expected):
    cluster, _ = node
    vm = cluster.guest_vm("refused")
    mutate(vm)
    with pytest.raises(grpc.RpcError) as caught:
        cluster.create(vm)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in caught.value.details()
