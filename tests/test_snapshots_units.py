"""Disk snapshots without a cluster: the decisions (who may be snapshotted or restored, and
why not) and the handler's file handling as root against what a VM's user could plant under
the disk roots (real files, real qemu-img)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import grpc
import pytest

from controller.snapshots import restore_refusal, set_phase, snapshot_refusal, stopped
from corral.snapshots import snapshot_disks, tag_for, valid_tag
from corral.v1 import meta_pb2, migration_pb2, snapshot_pb2, vm_pb2
from handler.snapshots import NodeSnapshots, SnapshotRefused, offline
from launcher.snapshots import SnapshotError, disk_paths
from tests.cluster import wait_for

S = snapshot_pb2
TAG = tag_for("0f0e0d0c-0b0a-4908-8706-050403020100")


def vm_with(*disks: vm_pb2.Disk, phase: int = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING,
            strategy: int = vm_pb2.RUN_STRATEGY_ALWAYS) -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name, vm.metadata.uid = "v", "uid-1"
    vm.spec.run_strategy = strategy
    vm.spec.disks.extend(disks)
    vm.status.phase = phase
    return vm


def qcow2(name: str, path: str = "/d/x.qcow2", read_only: bool = False) -> vm_pb2.Disk:
    return vm_pb2.Disk(name=name, persistent=vm_pb2.PersistentDisk(path=path, format=vm_pb2.DISK_FORMAT_QCOW2),
                       read_only=read_only)


def test_tags_are_uuids_only():
    assert valid_tag(TAG)
    for bad in ("corral-x", "corral-../../etc", "", TAG + " -d", "snap"):
        assert not valid_tag(bad)


def test_which_disks_a_snapshot_holds():
    raw = vm_pb2.Disk(name="r", persistent=vm_pb2.PersistentDisk(path="/d/r", format=vm_pb2.DISK_FORMAT_RAW))
    eph = vm_pb2.Disk(name="e", ephemeral=vm_pb2.EphemeralDisk(base_image_path="/i/b", base_format=vm_pb2.DISK_FORMAT_RAW))
    held, skipped, problems = snapshot_disks(vm_with(qcow2("a"), qcow2("b", read_only=True), eph))
    assert held == [("a", "/d/x.qcow2")] and skipped == ["b: read-only"] and problems == []
    booted = vm_with(qcow2("a"))
    booted.spec.boot.disk.image_path, booted.spec.boot.disk.format = "/d/root.qcow2", vm_pb2.DISK_FORMAT_QCOW2
    assert snapshot_disks(booted)[0] == [(".boot", "/d/root.qcow2"), ("a", "/d/x.qcow2")]
    assert disk_paths(booted, [".boot", "a"]) == {".boot": "/d/root.qcow2", "a": "/d/x.qcow2"}
    booted.spec.boot.disk.format = vm_pb2.DISK_FORMAT_RAW
    assert "the boot disk is raw" in snapshot_disks(booted)[2][0]
    for names, why in (([".boot"], "not qcow2"), (["b"], "not a persistent disk"), (["nope"], "not a persistent")):
        with pytest.raises(SnapshotError, match=why):
            disk_paths(booted, names)
    _, _, problems = snapshot_disks(vm_with(qcow2("a"), raw))
    assert problems and "is raw" in problems[0]
    _, _, problems = snapshot_disks(vm_with(eph))
    assert "no writable persistent disk" in problems[0]


def test_snapshot_refusals():
    vm = vm_with(qcow2("a"))
    assert snapshot_refusal(vm, []) == ""
    deleting = vm_with(qcow2("a"))
    deleting.metadata.delete_time.GetCurrentTime()
    assert "being deleted" in snapshot_refusal(deleting, [])
    moving = vm_with(qcow2("a"))
    moving.status.migration_target.migration_name = "m1"
    assert "being migrated (migration m1)" in snapshot_refusal(moving, [])
    pending = migration_pb2.Migration(spec=migration_pb2.MigrationSpec(vm_name="v"),
                                      status=migration_pb2.MigrationStatus(phase=migration_pb2.MIGRATION_PHASE_PENDING))
    pending.metadata.name = "m2"
    assert "being migrated (migration m2)" in snapshot_refusal(vm, [pending])
    starting = vm_with(qcow2("a"), phase=vm_pb2.VIRTUAL_MACHINE_PHASE_SCHEDULED)
    assert "is starting" in snapshot_refusal(starting, [])
    saved = vm_with(qcow2("a"), phase=vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED)
    saved.status.saved_state.path = "/s"
    assert "Saved" in snapshot_refusal(saved, [])


def test_stopped_means_no_run_and_none_coming():
    assert stopped(vm_with(phase=vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED, strategy=vm_pb2.RUN_STRATEGY_HALTED))
    assert stopped(vm_with(phase=vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING, strategy=vm_pb2.RUN_STRATEGY_HALTED))
    assert not stopped(vm_with(phase=vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING))
    # Always: an ended run is followed by another at once, so it is not "stopped".
    assert not stopped(vm_with(phase=vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED, strategy=vm_pb2.RUN_STRATEGY_ALWAYS))
    assert not stopped(vm_with(phase=vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING, strategy=vm_pb2.RUN_STRATEGY_MANUAL))


def test_restore_refusals():
    snap = S.VirtualMachineSnapshot(spec=S.VirtualMachineSnapshotSpec(vm_name="v"))
    snap.metadata.name = "s"
    snap.status.vm_uid = "uid-1"
    snap.status.disks.add(name="a", path="/d/x.qcow2", tag=TAG)
    set_phase(snap, S.SNAPSHOT_PHASE_SUCCEEDED, "Succeeded")
    halted = vm_with(qcow2("a"), phase=vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED, strategy=vm_pb2.RUN_STRATEGY_HALTED)
    assert restore_refusal(halted, snap) == ""
    assert "stop it first" in restore_refusal(vm_with(qcow2("a")), snap)
    other = vm_with(qcow2("a"), phase=vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED, strategy=vm_pb2.RUN_STRATEGY_HALTED)
    other.metadata.uid = "uid-2"
    assert "uid changed" in restore_refusal(other, snap)
    moved = vm_with(qcow2("a", "/d/y.qcow2"), phase=vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED,
                    strategy=vm_pb2.RUN_STRATEGY_HALTED)
    assert "no longer '/d/x.qcow2'" in restore_refusal(moved, snap)
    busy = vm_with(qcow2("a"), phase=vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED, strategy=vm_pb2.RUN_STRATEGY_HALTED)
    busy.status.snapshot_in_progress = "t"
    assert "busy" in restore_refusal(busy, snap)
    set_phase(snap, S.SNAPSHOT_PHASE_FAILED, "SnapshotFailed", "x")
    assert "only a Succeeded one" in restore_refusal(halted, snap)
    conditions = {c.type: c.status for c in snap.status.conditions}
    assert conditions == {"Ready": False, "Progressing": False, "Failure": True}


# -- the handler's file handling, as root ---------------------------------------------------

def tags_of(path: Path) -> set[str]:
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", "-f", "qcow2", str(path)],
                                     capture_output=True, check=True).stdout)
    return {s["name"] for s in info.get("snapshots") or []}


def target(path: Path, name: str = "d") -> S.DiskSnapshotTarget:
    return S.DiskSnapshotTarget(name=name, path=str(path), format=vm_pb2.DISK_FORMAT_QCOW2)


@pytest.fixture
def roots(root_state_dir):
    disks = root_state_dir / "disks"
    outside = root_state_dir / "outside"
    disks.mkdir()
    outside.mkdir()
    return disks, outside


def test_offline_take_restore_delete_on_a_disk_owned_by_a_vm_user(roots):
    disks, _ = roots
    disk = disks / "a.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    os.chown(disk, 64123, 64123)  # as a run's user holds it
    offline("take", TAG, [target(disk)], (str(disks),))
    offline("take", TAG, [target(disk)], (str(disks),))  # again: idempotent
    assert tags_of(disk) == {TAG}
    offline("restore", TAG, [target(disk)], (str(disks),))
    assert os.stat(disk).st_uid == 64123  # qemu-img ran as the owner: nothing became root's
    offline("delete", TAG, [target(disk)], (str(disks),))
    offline("delete", TAG, [target(disk)], (str(disks),))
    assert tags_of(disk) == set()
    with pytest.raises(SnapshotRefused) as refused:
        offline("restore", TAG, [target(disk)], (str(disks),))
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION and "holds no snapshot" in str(refused.value)


def test_deleting_from_a_disk_that_is_gone_is_done(roots):
    disks, _ = roots
    offline("delete", TAG, [target(disks / "removed.qcow2")], (str(disks),))


def test_a_symlink_planted_at_the_disk_path_is_not_followed_out_of_the_roots(roots):
    disks, outside = roots
    secret = outside / "secret.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(secret), "16M"], check=True)
    before = secret.read_bytes()
    (disks / "a.qcow2").symlink_to(secret)
    for action in ("take", "restore", "delete"):
        with pytest.raises(SnapshotRefused) as refused:
            offline(action, TAG, [target(disks / "a.qcow2")], (str(disks),))
        assert "outside this node's allowed directories" in str(refused.value)
    assert secret.read_bytes() == before


def test_a_hard_link_to_a_file_outside_the_roots_is_refused(roots):
    disks, outside = roots
    secret = outside / "secret.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(secret), "16M"], check=True)
    before = secret.read_bytes()
    os.link(secret, disks / "a.qcow2")
    with pytest.raises(SnapshotRefused) as refused:
        offline("take", TAG, [target(disks / "a.qcow2")], (str(disks),))
    assert "hard links" in str(refused.value)
    assert secret.read_bytes() == before


def test_a_fifo_or_a_backing_file_is_refused(roots):
    disks, outside = roots
    os.mkfifo(disks / "fifo")
    with pytest.raises(SnapshotRefused) as refused:
        offline("take", TAG, [target(disks / "fifo")], (str(disks),))
    assert "neither a regular file nor a block device" in str(refused.value)
    base = outside / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    sneaky = disks / "sneaky.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(sneaky)], check=True)
    with pytest.raises(SnapshotRefused) as refused:
        offline("take", TAG, [target(sneaky)], (str(disks),))
    assert "backing file" in str(refused.value)
    assert tags_of(base) == set() and tags_of(sneaky) == set()


class _Agent:
    node_name = "n1"
    launchers: dict = {}

    class device_roots:  # noqa: N801 - stands in for handler.devices.Roots
        disks: tuple[str, ...] = ()


def test_node_calls_refuse_bad_requests_before_touching_anything():
    node = NodeSnapshots(_Agent())
    bad = [S.TakeDiskSnapshotsRequest(name="v", tag="corral-../x", disks=[target(Path("/d/a"))]),
           S.TakeDiskSnapshotsRequest(name="", tag=TAG, disks=[target(Path("/d/a"))]),
           S.TakeDiskSnapshotsRequest(name="v", tag=TAG)]
    for request in bad:
        with pytest.raises(SnapshotRefused) as refused:
            node.take(request)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(SnapshotRefused) as refused:
        node.take(S.TakeDiskSnapshotsRequest(name="v", instance_uid="u1", tag=TAG, disks=[target(Path("/d/a"))]))
    assert refused.value.code == grpc.StatusCode.NOT_FOUND


def test_a_disk_a_qemu_holds_open_is_retried_not_failed(roots):
    disks, _ = roots
    disk = disks / "busy.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    monitor = disks.parent / "qmp.sock"
    qemu = subprocess.Popen(["qemu-system-x86_64", "-nodefaults", "-display", "none", "-accel", "tcg", "-S",
                             "-drive", f"file={disk},format=qcow2,if=virtio",
                             "-qmp", f"unix:{monitor},server=on,wait=off"])
    try:
        def greeted() -> bool:  # QEMU's main loop runs: its drives are open (and locked)
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(monitor))
                return b"QMP" in client.recv(4096)
        wait_for(greeted, timeout=60, what="QEMU to open the disk")
        with pytest.raises(SnapshotRefused) as refused:
            offline("take", TAG, [target(disk)], (str(disks),))
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE and "in use" in str(refused.value)
    finally:
        qemu.kill()
        qemu.wait()
    offline("take", TAG, [target(disk)], (str(disks),))
    assert tags_of(disk) == {TAG}


class _Run:
    """A launcher as NodeSnapshots sees it: its VM, uid, and whether it is over."""

    def __init__(self, name: str, uid: str, *, ended=None) -> None:
        self.vm = vm_pb2.VirtualMachine(metadata=meta_pb2.ObjectMeta(name=name))
        self.uid, self.ended, self.finished = uid, ended, False
        self.closed = threading.Event()


def test_a_run_still_ending_is_retried_a_live_one_refused(roots):
    """The controller may show a VM stopped (its end reported) a moment before the node has let
    the run's launcher go: a restore then is ABORTED (retried), not failed; a live run refuses."""
    from handler.agent import NodeAgent
    disks, _ = roots
    agent = _Agent()
    agent.launchers = {"u1": _Run("v", "u1")}
    agent.reported = {}
    agent.ending = lambda launcher: NodeAgent.ending(agent, launcher)
    agent.device_roots = type("Roots", (), {"disks": (str(disks),)})
    node = NodeSnapshots(agent)
    disk = disks / "ending.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    request = S.RestoreDiskSnapshotsRequest(name="v", tag=TAG, disks=[target(disk)])
    with pytest.raises(SnapshotRefused) as refused:
        node.restore(request)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION and "in use" in str(refused.value)
    agent.reported["u1"] = ((vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED, "GuestShutdown"), 0.0)
    with pytest.raises(SnapshotRefused) as refused:
        node.restore(request)
    assert refused.value.code == grpc.StatusCode.ABORTED and "still ending" in str(refused.value)
    from controller.snapshots import RETRY_CODES, waiting_reason
    assert refused.value.code in RETRY_CODES and waiting_reason(refused.value.code) == "RunEnding"
    assert waiting_reason(grpc.StatusCode.UNAVAILABLE) == "NodeUnavailable"
    agent.launchers["u1"].finished = True  # let go: the disks are free
    node.take(S.TakeDiskSnapshotsRequest(name="v", tag=TAG, disks=[target(disk)]))
    assert tags_of(disk) == {TAG}
