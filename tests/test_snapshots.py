"""Disk snapshots on a real guest through a real cluster (etcd, controller, handler, launchers,
QEMU under TCG), and the CLI as a user runs it.

One VM with a qcow2 data disk (and a read-only disk, which snapshots leave out) goes through
the whole story once (module fixture); each test asserts one part of what was seen:

1. first run: the guest counts (boot number:counter) into /mnt/data/count every second;
2. snapshot "live" while it runs (the guest agent freezes its file systems), the guest counts on;
3. stop; snapshot "offline" of the stopped VM (qemu-img, through the CLI);
4. restore "live" with --start: the second run boots seeing the counter as it was at "live";
5. stop; restore "offline"; start: the third run sees the first run's last count;
6. delete both (one while the VM runs: QEMU deletes it; one while stopped: qemu-img).

The guest prints BOOT-STATE=BOOTS:COUNT at each boot, then COUNT=BOOT:N every second.
Refusals (a raw disk, a VM being deleted, bad names, a missing VM) leave nothing stored; a VM
being migrated is refused by the same check (tests/test_snapshots_units.py: a live migration
needs two session-mode nodes, tests/test_migration.py's setup)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest

from corral.v1 import snapshot_pb2, snapshot_pb2_grpc, vm_pb2
from tests.cluster import REPO, Cluster, wait_for

S = snapshot_pb2
RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
QCOW2, RAW = vm_pb2.DISK_FORMAT_QCOW2, vm_pb2.DISK_FORMAT_RAW

COUNTER = """#!/bin/sh
b=$(cat /mnt/data/boots 2>/dev/null || echo 0)
echo "BOOT-STATE=$b:$(cat /mnt/data/count 2>/dev/null || echo 0)"
b=$((b + 1)); echo $b > /mnt/data/boots; sync
i=0
while true; do i=$((i + 1)); echo $i > /mnt/data/count; sync; echo "COUNT=$b:$i"; sleep 1; done
"""


def ext4_qcow2(path: Path) -> None:
    raw = path.with_suffix(".raw")
    subprocess.run(["mkfs.ext4", "-q", "-F", str(raw), "16M"], check=True)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()


def image_tags(path: Path) -> set[str]:
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", "-f", "qcow2", str(path)],
                                     capture_output=True, check=True).stdout)
    return {s["name"] for s in info.get("snapshots") or []}


def serial(cluster: Cluster, name: str) -> str:
    path = Path(cluster.get(name).status.serial_log_path)
    return path.read_bytes().decode(errors="replace") if path.exists() else ""


def counts(text: str) -> list[tuple[int, int]]:
    return [(int(b), int(n)) for b, n in re.findall(r"COUNT=(\d+):(\d+)", text)]


def boot_state(text: str) -> tuple[int, int] | None:
    found = re.search(r"BOOT-STATE=(\d+):(\d+)", text)
    return (int(found[1]), int(found[2])) if found else None


def wait_boot(cluster: Cluster, name: str, what: str) -> str:
    """The serial log of the VM's current run once it printed BOOT-STATE; on a timeout the
    assertion carries the VM's status and the log's tail (what the guest did instead)."""
    try:
        return wait_for(lambda: cluster.get(name).status.phase == RUNNING
                        and boot_state(text := serial(cluster, name)) and text, timeout=180, what=what)
    except AssertionError as exc:
        vm = cluster.get(name)
        raise AssertionError(f"{exc}; phase {vm_pb2.VirtualMachinePhase.Name(vm.status.phase)}, run "
                             f"{vm.status.instance_uid}, serial {vm.status.serial_log_path}:\n"
                             f"{serial(cluster, name)[-3000:]}") from None


def corral(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corral.cli", "--server", cluster.servers, *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


class Snapshots:
    def __init__(self, cluster: Cluster) -> None:
        self.stub = snapshot_pb2_grpc.VirtualMachineSnapshotServiceStub(cluster.channel())

    def create(self, vm: str, name: str = "") -> S.VirtualMachineSnapshot:
        return self.stub.CreateVirtualMachineSnapshot(S.CreateVirtualMachineSnapshotRequest(snapshot=S.VirtualMachineSnapshot(
            metadata={"name": name}, spec=S.VirtualMachineSnapshotSpec(vm_name=vm))), timeout=10).snapshot

    def get(self, name: str) -> S.VirtualMachineSnapshot:
        return self.stub.GetVirtualMachineSnapshot(S.GetVirtualMachineSnapshotRequest(name=name), timeout=10).snapshot

    def exists(self, name: str) -> bool:
        try:
            self.get(name)
            return True
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise

    def wait_final(self, name: str, timeout: float = 120) -> S.VirtualMachineSnapshot:
        return wait_for(lambda: (s := self.get(name)).status.phase in (S.SNAPSHOT_PHASE_SUCCEEDED, S.SNAPSHOT_PHASE_FAILED)
                        and s, timeout=timeout, what=f"snapshot {name} to end")

    def restore(self, name: str, start: bool = False) -> S.VirtualMachineSnapshot:
        return self.stub.RestoreVirtualMachineSnapshot(S.RestoreVirtualMachineSnapshotRequest(name=name, start=start),
                                                       timeout=10).snapshot


@pytest.fixture(scope="module")
def node(etcd, guest_dir, tmp_path_factory):
    cluster = Cluster(etcd=etcd, base=tmp_path_factory.mktemp("snapshots"), prefix=f"/t-{uuid.uuid4().hex[:8]}/",
                      guest_dir=guest_dir)
    disks = cluster.node_root / "disks"
    disks.mkdir()
    try:
        cluster.start_controller()
        cluster.start_handler("n1", extra=["--disk-roots", str(disks)])
        yield cluster, disks
    finally:
        cluster.close()


def stop(cluster: Cluster, name: str) -> None:
    cluster.vms.StopVirtualMachine(vm_pb2.StopVirtualMachineRequest(name=name), timeout=10)
    wait_for(lambda: cluster.get(name).status.phase in (vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED,
                                                         vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED),
             timeout=60, what=f"vm {name} to stop")


@pytest.fixture(scope="module")
def story(node):
    cluster, disks = node
    snaps = Snapshots(cluster)
    data = disks / "data.qcow2"
    ext4_qcow2(data)
    ro = disks / "ro.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(ro), "16M"], check=True)
    vm = cluster.guest_vm("snappy")
    vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_ALWAYS
    vm.spec.disks.extend([
        vm_pb2.Disk(name="data", persistent=vm_pb2.PersistentDisk(path=str(data), format=QCOW2)),
        vm_pb2.Disk(name="ro", persistent=vm_pb2.PersistentDisk(path=str(ro), format=RAW), read_only=True)])
    vm.spec.cloud_init.user_data = COUNTER
    cluster.create(vm)
    seen: dict = {"data": data}
    first = wait_for(lambda: len(counts(text := serial(cluster, "snappy"))) >= 3 and text, timeout=120,
                     what="the first run to count")
    seen["first_boot"] = boot_state(first)
    seen["c0"] = counts(first)[-1]
    seen["live_created"] = snaps.create("snappy", "live")
    seen["live"] = snaps.wait_final("live")
    seen["c1"] = counts(serial(cluster, "snappy"))[-1]
    # Refusals while it runs.
    with pytest.raises(grpc.RpcError) as refused:
        snaps.restore("live")
    seen["restore_running"] = refused.value
    # A paused guest's agent cannot answer: taken unfrozen, and said so.
    cluster.vms.PauseVirtualMachine(vm_pb2.PauseVirtualMachineRequest(name="snappy"), timeout=30)
    seen["paused"] = snaps.wait_final(snaps.create("snappy", "paused").metadata.name)
    cluster.vms.UnpauseVirtualMachine(vm_pb2.UnpauseVirtualMachineRequest(name="snappy"), timeout=30)
    snaps.stub.DeleteVirtualMachineSnapshot(S.DeleteVirtualMachineSnapshotRequest(name="paused"), timeout=10)
    wait_for(lambda: not snaps.exists("paused"), timeout=60, what="snapshot paused to go")
    wait_for(lambda: counts(serial(cluster, "snappy"))[-1][1] >= seen["c1"][1] + 3, timeout=60,
             what="the guest to write more after the snapshot")
    stop(cluster, "snappy")
    seen["cf"] = counts(serial(cluster, "snappy"))[-1]
    seen["offline_cli"] = corral(cluster, "snapshot", "snappy", "--name", "offline")
    assert seen["offline_cli"].returncode == 0, seen["offline_cli"].stdout + seen["offline_cli"].stderr
    seen["offline"] = snaps.get("offline")
    seen["tags_both"] = image_tags(data)
    seen["get_cli"] = corral(cluster, "get", "snapshots")
    seen["describe_cli"] = corral(cluster, "describe", "snapshot", "live")
    seen["json_cli"] = corral(cluster, "get", "snapshot", "live", "-o", "json")
    seen["name_cli"] = corral(cluster, "get", "snapshots", "-o", "name")
    # Restore "live" and start (the CLI's restore-snapshot --start).
    seen["restore_cli"] = corral(cluster, "restore-snapshot", "live", "--start")
    assert seen["restore_cli"].returncode == 0, seen["restore_cli"].stdout + seen["restore_cli"].stderr
    second = wait_boot(cluster, "snappy", "the second run to boot")
    seen["second_boot"] = boot_state(second)
    seen["live_after_restore"] = snaps.get("live")
    wait_for(lambda: len(counts(serial(cluster, "snappy"))) >= 2, timeout=60, what="the second run to count")
    # Delete "live" while the VM runs: QEMU removes the tag from the open disk.
    seen["delete_live_cli"] = corral(cluster, "delete", "snapshot", "live")
    wait_for(lambda: not snaps.exists("live"), timeout=60, what="snapshot live to go")
    seen["tags_after_live_delete"] = image_tags(data)
    stop(cluster, "snappy")
    snaps.restore("offline")
    seen["offline_restored"] = wait_for(lambda: (s := snaps.get("offline")).status.restore.phase
                                        != S.RESTORE_PHASE_IN_PROGRESS and s, timeout=60, what="restore of offline")
    seen["phase_after_offline_restore"] = cluster.get("snappy").status.phase  # Halted: no new run by itself
    cluster.vms.StartVirtualMachine(vm_pb2.StartVirtualMachineRequest(name="snappy"), timeout=10)
    third = wait_boot(cluster, "snappy", "the third run to boot")
    seen["third_boot"] = boot_state(third)
    stop(cluster, "snappy")
    snaps.stub.DeleteVirtualMachineSnapshot(S.DeleteVirtualMachineSnapshotRequest(name="offline"), timeout=10)
    wait_for(lambda: not snaps.exists("offline"), timeout=60, what="snapshot offline to go")
    seen["tags_at_end"] = image_tags(data)
    seen["vm_at_end"] = cluster.get("snappy")
    return seen


def test_snapshot_of_a_running_vm_is_frozen_by_the_guest_agent(story):
    live = story["live"]
    assert live.status.phase == S.SNAPSHOT_PHASE_SUCCEEDED, live.status.conditions
    assert list(live.status.indications) == ["Online", "GuestAgent"]
    ready = {c.type: c for c in live.status.conditions}
    assert ready["Ready"].status and not ready["Progressing"].status and not ready["Failure"].status
    assert "frozen by the guest agent" in ready["Ready"].message
    assert live.status.instance_uid and live.status.node_name == "n1"
    assert [d.name for d in live.status.disks] == ["data"]
    assert list(live.status.skipped_disks) == ["ro: read-only"]


def test_snapshot_of_a_paused_guest_is_not_frozen_and_says_why(story):
    paused = story["paused"]
    assert paused.status.phase == S.SNAPSHOT_PHASE_SUCCEEDED
    assert list(paused.status.indications) == ["Online", "NoGuestAgent"]
    ready = next(c for c in paused.status.conditions if c.type == "Ready")
    assert "not frozen (the guest is paused" in ready.message


def test_restore_brings_the_disk_back_to_the_running_snapshot(story):
    assert story["first_boot"] == (0, 0)
    (b0, c0), (b1, c1), (bf, cf) = story["c0"], story["c1"], story["cf"]
    boots, count = story["second_boot"]
    assert boots == 1 and c0 <= count <= c1 + 1, (story["second_boot"], c0, c1)
    assert count < cf, "the guest wrote more after the snapshot, and the restore undid it"
    restore = story["live_after_restore"].status.restore
    assert restore.phase == S.RESTORE_PHASE_SUCCEEDED and restore.start
    assert story["restore_cli"].returncode == 0, story["restore_cli"].stderr
    assert "restore Succeeded" in story["restore_cli"].stdout


def test_snapshot_and_restore_of_a_stopped_vm(story):
    cli = story["offline_cli"]
    assert cli.returncode == 0, cli.stderr
    assert "virtualmachinesnapshot/offline created for virtualmachine/snappy" in cli.stdout
    offline = story["offline"]
    assert offline.status.phase == S.SNAPSHOT_PHASE_SUCCEEDED
    assert list(offline.status.indications) == [] and not offline.status.instance_uid
    assert {f"corral-{story['live'].metadata.uid}", f"corral-{offline.metadata.uid}"} == story["tags_both"]
    assert story["offline_restored"].status.restore.phase == S.RESTORE_PHASE_SUCCEEDED
    assert story["phase_after_offline_restore"] != RUNNING
    # The third run sees the first run's last count (boot 1), not the second run's.
    assert story["third_boot"][0] == 1 and story["third_boot"][1] >= story["cf"][1]


def test_delete_removes_the_snapshot_from_the_disk_running_or_stopped(story):
    assert story["delete_live_cli"].returncode == 0, story["delete_live_cli"].stderr
    assert story["tags_after_live_delete"] == {f"corral-{story['offline'].metadata.uid}"}
    assert story["tags_at_end"] == set()
    vm = story["vm_at_end"]
    assert not vm.status.snapshot_in_progress and not vm.status.restore_in_progress


def test_cli_lists_and_describes_snapshots(story):
    table = story["get_cli"].stdout
    assert re.search(r"^live\s+snappy\s+Succeeded\s+true\s+Online,GuestAgent\s+data", table, re.M), table
    assert re.search(r"^offline\s+snappy\s+Succeeded\s+true\s+<none>\s+data", table, re.M), table
    described = story["describe_cli"].stdout
    assert "GuestAgent" in described and "ro: read-only" in described and "corral-" in described
    shown = json.loads(story["json_cli"].stdout)
    assert shown["spec"]["vmName"] == "snappy" and shown["status"]["indications"] == ["Online", "GuestAgent"]
    assert story["name_cli"].stdout.split() == ["virtualmachinesnapshot/live", "virtualmachinesnapshot/offline"]


def test_restore_of_a_running_vm_is_refused(story):
    error = story["restore_running"]
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "stop it first" in error.details()


def test_refusals_change_nothing(node):
    cluster, disks = node
    snaps = Snapshots(cluster)
    raw = disks / "raw.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "16M"], check=True)
    vm = cluster.guest_vm("rawvm")
    vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_HALTED
    vm.spec.disks.append(vm_pb2.Disk(name="d", persistent=vm_pb2.PersistentDisk(path=str(raw), format=RAW)))
    cluster.create(vm)
    cases = [("rawvm", "", grpc.StatusCode.FAILED_PRECONDITION, "is raw: snapshots need qcow2"),
             ("nosuchvm", "", grpc.StatusCode.NOT_FOUND, "not found"),
             ("rawvm", "Bad_Name", grpc.StatusCode.INVALID_ARGUMENT, "metadata.name")]
    for vm_name, snap_name, code, words in cases:
        with pytest.raises(grpc.RpcError) as refused:
            snaps.create(vm_name, snap_name)
        assert refused.value.code() == code and words in refused.value.details(), refused.value.details()
    with pytest.raises(grpc.RpcError) as refused:
        snaps.restore("nosuch")
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    # A VM being deleted: paused, it ignores the ACPI button, so its deletion waits out its grace period.
    going = cluster.guest_vm("goingvm")
    going.spec.termination_grace_period_seconds = 120
    going.spec.disks.append(vm_pb2.Disk(name="d", persistent=vm_pb2.PersistentDisk(path=str(raw), format=RAW),
                                        read_only=True))
    qcow = disks / "going.qcow2"
    ext4_qcow2(qcow)
    going.spec.disks.append(vm_pb2.Disk(name="e", persistent=vm_pb2.PersistentDisk(path=str(qcow), format=QCOW2)))
    cluster.create(going)
    cluster.wait_phase("goingvm", RUNNING, timeout=120)
    cluster.vms.PauseVirtualMachine(vm_pb2.PauseVirtualMachineRequest(name="goingvm"), timeout=30)
    cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="goingvm"), timeout=10)
    with pytest.raises(grpc.RpcError) as refused:
        snaps.create("goingvm")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'goingvm' is being deleted" in refused.value.details()
    listed = snaps.stub.ListVirtualMachineSnapshots(S.ListVirtualMachineSnapshotsRequest(vm_name="rawvm"), timeout=10)
    assert list(listed.snapshots) == []
    assert not cluster.get("rawvm").status.snapshot_in_progress
    every = snaps.stub.ListVirtualMachineSnapshots(S.ListVirtualMachineSnapshotsRequest(), timeout=10).snapshots
    assert not [s.metadata.name for s in every if s.spec.vm_name in ("rawvm", "goingvm")]
