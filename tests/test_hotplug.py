"""Hotplug on real guests through a real cluster (etcd, controller, handler, launchers, QEMU
under TCG): disks added to and removed from a running VM (kept in its spec, so the next run has
them), vCPUs and virtio-mem memory plugged live, and what is refused (bad input, no room on the
node, a guest that does not take the change) leaving the spec as it was.

The test guest (scripts/build-guest.sh) prints ``CORRAL-GUEST-STATE cpus=.. memtotal_kib=..
scsi=NAME:SERIAL,..`` on ttyS0 whenever its online CPUs, MemTotal or SCSI disks change; with
``corral.nocpuonline`` / ``corral.novirtiomem`` on its command line it leaves new CPUs offline /
has no virtio-mem driver (a guest that refuses)."""
from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path

import grpc
import pytest

from corral.v1 import node_pb2, vm_pb2
from handler.launchers import vm_dir_for
from tests.cluster import Cluster, wait_for

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
RAW = vm_pb2.DISK_FORMAT_RAW
#: no_timer_check: a loaded host can make TCG fail the kernel's early IO-APIC timer check (a panic).
CMDLINE = "console=ttyS0 quiet no_timer_check corral.hotplug"


@pytest.fixture(scope="module")
def node(etcd, guest_dir, tmp_path_factory):
    cluster = Cluster(etcd=etcd, base=tmp_path_factory.mktemp("hotplug"), prefix=f"/t-{uuid.uuid4().hex[:8]}/",
                      guest_dir=guest_dir)
    dirs = {name: cluster.node_root / name for name in ("disks", "elsewhere")}
    for path in dirs.values():
        path.mkdir()
    try:
        cluster.start_controller()
        cluster.start_handler("n1", vcpus=4, memory_mib=2048, extra=["--disk-roots", str(dirs["disks"])])
        yield cluster, dirs
    finally:
        cluster.close()


def ext4_image(path: Path) -> Path:
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path), "16M"], check=True)
    return path


def persistent(name: str, path: Path) -> vm_pb2.Disk:
    return vm_pb2.Disk(name=name, persistent=vm_pb2.PersistentDisk(path=str(path), format=RAW))


def serial(vm: vm_pb2.VirtualMachine) -> str:
    path = Path(vm.status.serial_log_path)
    return path.read_bytes().decode(errors="replace") if vm.status.serial_log_path and path.exists() else ""


def guest_state(cluster: Cluster, name: str) -> dict[str, str]:
    """The guest's last CORRAL-GUEST-STATE line, as a dict ({} before the first)."""
    lines = re.findall(r"CORRAL-GUEST-STATE (\S.*?)\r?\n", serial(cluster.get(name)))
    return dict(part.split("=", 1) for part in lines[-1].split()) if lines else {}


def wait_state(cluster: Cluster, name: str, key: str, check, what: str, timeout: float = 60) -> dict[str, str]:
    return wait_for(lambda: (state := guest_state(cluster, name)) and key in state and check(state[key]) and state,
                    timeout=timeout, what=what)


def running_vm(cluster: Cluster, name: str, *, cmdline: str = CMDLINE, **spec) -> vm_pb2.VirtualMachine:
    vm = cluster.guest_vm(name, vcpus=spec.pop("vcpus", 1), memory_mib=spec.pop("memory_mib", 128))
    vm.spec.boot.kernel.cmdline = cmdline
    vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_ALWAYS
    for key, value in spec.items():
        setattr(vm.spec, key, value)
    cluster.create(vm)
    vm = cluster.wait_phase(name, RUNNING, timeout=120)
    wait_for(lambda: "CORRAL-GUEST-READY" in serial(cluster.get(name)), timeout=120, what=f"{name} to boot")
    return cluster.get(name)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def allocated(cluster: Cluster, node: str = "n1") -> tuple[int, int]:
    shown = cluster.nodes.GetNode(node_pb2.GetNodeRequest(name=node), timeout=5).node.status.allocated
    return shown.vcpus, shown.memory_mib


# -- disks -------------------------------------------------------------------------------------
def test_volume_added_live_kept_for_the_next_run_and_removed(node):
    cluster, dirs = node
    image = ext4_image(dirs["disks"] / "data1.img")
    vm = running_vm(cluster, "hp-disk")
    first_run = vm.status.instance_uid
    wait_state(cluster, "hp-disk", "scsi", lambda v: v == "", "the guest's first state line")

    added = cluster.vms.AddVolume(vm_pb2.AddVolumeRequest(name="hp-disk", disk=persistent("data1", image)),
                                  timeout=60).virtual_machine
    assert [(d.name, d.bus) for d in added.spec.disks] == [("data1", vm_pb2.DISK_BUS_SCSI)]
    state = wait_state(cluster, "hp-disk", "scsi", lambda v: ":data1," in v, "the guest to see the disk")
    assert re.fullmatch(r"sd[a-z]+:data1,", state["scsi"])
    run_owner = vm_dir_for(cluster.state_dir("n1"), first_run).stat().st_uid
    assert image.stat().st_uid == run_owner  # handed to the run's user, as a disk of a starting run

    # Bad input changes nothing: a name or path clash, a path outside the node's disk roots.
    version = cluster.get("hp-disk").metadata.resource_version
    assert code_of(lambda: cluster.vms.AddVolume(vm_pb2.AddVolumeRequest(
        name="hp-disk", disk=persistent("data1", dirs["disks"] / "other.img")), timeout=60)) == \
        grpc.StatusCode.ALREADY_EXISTS
    assert code_of(lambda: cluster.vms.AddVolume(vm_pb2.AddVolumeRequest(
        name="hp-disk", disk=persistent("again", image)), timeout=60)) == grpc.StatusCode.ALREADY_EXISTS
    outside = ext4_image(dirs["elsewhere"] / "outside.img")
    with pytest.raises(grpc.RpcError) as info:
        cluster.vms.AddVolume(vm_pb2.AddVolumeRequest(name="hp-disk", disk=persistent("out", outside)), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "outside" in info.value.details()
    assert code_of(lambda: cluster.vms.AddVolume(vm_pb2.AddVolumeRequest(
        name="hp-disk", disk=persistent("stale", dirs["disks"] / "x.img"), resource_version=version - 1),
        timeout=60)) == grpc.StatusCode.ABORTED
    assert code_of(lambda: cluster.vms.AddVolume(vm_pb2.AddVolumeRequest(
        name="nosuchvm", disk=persistent("d", image)), timeout=60)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: cluster.vms.RemoveVolume(vm_pb2.RemoveVolumeRequest(
        name="hp-disk", disk_name="nosuchdisk"), timeout=60)) == grpc.StatusCode.NOT_FOUND
    current = cluster.get("hp-disk")
    assert [d.name for d in current.spec.disks] == ["data1"]
    assert guest_state(cluster, "hp-disk")["scsi"] == state["scsi"]

    # The next run boots with the disk (from the spec, on SCSI).
    cluster.vms.RestartVirtualMachine(vm_pb2.RestartVirtualMachineRequest(name="hp-disk"), timeout=10)
    wait_for(lambda: (v := cluster.get("hp-disk")).status.instance_uid != first_run and v.status.phase == RUNNING,
             timeout=120, what="a second run")
    wait_state(cluster, "hp-disk", "scsi", lambda v: ":data1," in v, "the second run to have the disk")

    removed = cluster.vms.RemoveVolume(vm_pb2.RemoveVolumeRequest(name="hp-disk", disk_name="data1"),
                                       timeout=60).virtual_machine
    assert list(removed.spec.disks) == []
    wait_state(cluster, "hp-disk", "scsi", lambda v: v == "", "the guest to lose the disk")
    assert image.stat().st_uid == 0  # given back to root once detached, not when the run ends
    cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="hp-disk"), timeout=10)


def test_volume_of_a_stopped_vm_goes_to_its_spec(node):
    cluster, dirs = node
    vm = cluster.guest_vm("hp-stopped")
    vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_HALTED
    created = cluster.create(vm)
    added = cluster.vms.AddVolume(vm_pb2.AddVolumeRequest(
        name="hp-stopped", disk=persistent("later", dirs["disks"] / "later.img")), timeout=10).virtual_machine
    assert [d.name for d in added.spec.disks] == ["later"]
    assert code_of(lambda: cluster.vms.RemoveVolume(vm_pb2.RemoveVolumeRequest(
        name="hp-stopped", disk_name="later", resource_version=created.metadata.resource_version),
        timeout=10)) == grpc.StatusCode.ABORTED
    removed = cluster.vms.RemoveVolume(vm_pb2.RemoveVolumeRequest(name="hp-stopped", disk_name="later"),
                                       timeout=10).virtual_machine
    assert list(removed.spec.disks) == []


# -- vCPUs and memory --------------------------------------------------------------------------
def test_vcpus_and_memory_plugged_live_counted_on_the_node(node):
    cluster, _dirs = node
    vm = running_vm(cluster, "hp-size", vcpus=1, max_vcpus=2, memory_mib=256, max_memory_mib=512)
    boot = wait_state(cluster, "hp-size", "cpus", lambda v: v == "0", "the guest's first state line")
    before = allocated(cluster)

    resized = cluster.vms.ResizeVirtualMachine(vm_pb2.ResizeVirtualMachineRequest(name="hp-size", vcpus=2),
                                               timeout=120).virtual_machine
    assert (resized.spec.vcpus, resized.status.current_vcpus) == (2, 2)
    wait_state(cluster, "hp-size", "cpus", lambda v: v == "0-1", "the guest to bring vCPU 1 online")
    wait_for(lambda: allocated(cluster) == (before[0] + 1, before[1]), timeout=10, what="the node's allocation")

    resized = cluster.vms.ResizeVirtualMachine(vm_pb2.ResizeVirtualMachineRequest(name="hp-size", memory_mib=384),
                                               timeout=120).virtual_machine
    assert (resized.spec.memory_mib, resized.status.current_memory_mib) == (384, 384)
    grown = wait_state(cluster, "hp-size", "memtotal_kib", lambda v: int(v) > int(boot["memtotal_kib"]),
                       "MemTotal to grow")
    assert int(grown["memtotal_kib"]) - int(boot["memtotal_kib"]) == 128 * 1024
    wait_for(lambda: allocated(cluster) == (before[0] + 1, before[1] + 128), timeout=10, what="the node's allocation")

    # Memory goes back (virtio-mem takes the movable blocks back); vCPUs are only added live.
    shrunk = cluster.vms.ResizeVirtualMachine(vm_pb2.ResizeVirtualMachineRequest(name="hp-size", memory_mib=256),
                                              timeout=120).virtual_machine
    assert shrunk.spec.memory_mib == 256
    wait_state(cluster, "hp-size", "memtotal_kib", lambda v: v == boot["memtotal_kib"], "MemTotal to shrink back")
    wait_for(lambda: allocated(cluster) == (before[0] + 1, before[1]), timeout=10, what="the node's allocation")

    # Refused, nothing changed: fewer vCPUs live, over the maximum, not a VM.
    version = cluster.get("hp-size").metadata.resource_version
    assert code_of(lambda: cluster.vms.ResizeVirtualMachine(
        vm_pb2.ResizeVirtualMachineRequest(name="hp-size", vcpus=1), timeout=30)) == \
        grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: cluster.vms.ResizeVirtualMachine(
        vm_pb2.ResizeVirtualMachineRequest(name="hp-size", vcpus=3), timeout=30)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: cluster.vms.ResizeVirtualMachine(
        vm_pb2.ResizeVirtualMachineRequest(name="hp-size", memory_mib=1024), timeout=30)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: cluster.vms.ResizeVirtualMachine(
        vm_pb2.ResizeVirtualMachineRequest(name="nosuchvm", vcpus=1), timeout=30)) == grpc.StatusCode.NOT_FOUND
    assert cluster.get("hp-size").metadata.resource_version == version
    cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="hp-size"), timeout=10)


def test_no_room_on_the_node_is_refused_and_the_spec_unchanged(node):
    cluster, _dirs = node
    big = running_vm(cluster, "hp-big", memory_mib=256, max_memory_mib=2304)  # the node has 2048 MiB
    with pytest.raises(grpc.RpcError) as info:
        cluster.vms.ResizeVirtualMachine(vm_pb2.ResizeVirtualMachineRequest(name="hp-big", memory_mib=2304),
                                         timeout=60)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "no room" in info.value.details()
    after = cluster.get("hp-big")
    assert after.spec.memory_mib == 256 and after.status.current_memory_mib == 0
    assert after.metadata.resource_version == big.metadata.resource_version
    cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="hp-big"), timeout=10)


def test_a_guest_that_refuses_is_reported_and_undone(node):
    cluster, _dirs = node
    running_vm(cluster, "hp-refuse", cmdline=f"{CMDLINE} corral.nocpuonline corral.novirtiomem",
               vcpus=1, max_vcpus=2, memory_mib=256, max_memory_mib=512)
    wait_state(cluster, "hp-refuse", "cpus", lambda v: v == "0", "the guest's first state line")
    for request, what in ((vm_pb2.ResizeVirtualMachineRequest(name="hp-refuse", vcpus=2), "vCPUs"),
                          (vm_pb2.ResizeVirtualMachineRequest(name="hp-refuse", memory_mib=384), "MiB")):
        with pytest.raises(grpc.RpcError) as info:
            cluster.vms.ResizeVirtualMachine(request, timeout=120)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
        assert what in info.value.details()
    after = cluster.get("hp-refuse")
    assert (after.spec.vcpus, after.spec.memory_mib) == (1, 256)
    assert guest_state(cluster, "hp-refuse")["cpus"] == "0"
    cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="hp-refuse"), timeout=10)


def test_bad_maxima_are_refused_at_creation(node):
    cluster, _dirs = node
    for field, value in (("max_vcpus", 0 - 1), ("max_memory_mib", 64)):
        vm = cluster.guest_vm(f"hp-bad-{field.replace('_', '-')}", memory_mib=128)
        setattr(vm.spec, field, value)
        with pytest.raises(grpc.RpcError) as info:
            cluster.create(vm)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and f"spec.{field}" in info.value.details()
    plain = cluster.guest_vm("hp-plain")
    plain.spec.run_strategy = vm_pb2.RUN_STRATEGY_HALTED
    cluster.create(plain)
    with pytest.raises(grpc.RpcError) as info:
        cluster.vms.ResizeVirtualMachine(vm_pb2.ResizeVirtualMachineRequest(name="hp-plain", vcpus=2), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_vcpus" in info.value.details()


def test_cli_verbs(node, capsys):
    from corral.cli import main  # noqa: PLC0415
    cluster, dirs = node
    vm = cluster.guest_vm("hp-cli")
    vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_HALTED
    vm.spec.max_vcpus = 2
    cluster.create(vm)
    server = ["--server", cluster.servers]
    assert main([*server, "addvolume", "hp-cli", "--volume-name", "extra", "--path",
                 str(dirs["disks"] / "extra.qcow2"), "--format", "qcow2"]) == 0
    assert "virtualmachine/hp-cli volume extra added" in capsys.readouterr().out
    assert main([*server, "set-vcpus", "vm/hp-cli", "2"]) == 0
    assert main([*server, "set-memory", "hp-cli", "1Gi"]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    stored = cluster.get("hp-cli")
    assert [(d.name, d.persistent.format, d.bus) for d in stored.spec.disks] == [
        ("extra", vm_pb2.DISK_FORMAT_QCOW2, vm_pb2.DISK_BUS_SCSI)]
    assert (stored.spec.vcpus, stored.spec.memory_mib) == (2, 128)
    assert main([*server, "removevolume", "hp-cli", "--volume-name", "extra"]) == 0
    assert list(cluster.get("hp-cli").spec.disks) == []
