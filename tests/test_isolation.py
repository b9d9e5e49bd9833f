"""Per-VM isolation (handler/isolation.py, launcher/privileges.py): each launcher and its QEMU
run as the VM's own user, in the VM's own cgroup, in a directory only that user can enter.
Unit tests of the path and limit logic, and one end-to-end test with two real guests."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
from pathlib import Path

import pytest

from corral.v1 import vm_pb2
from handler import isolation
from handler.isolation import CGROUP_PARENT, Layout, detect_layout, limit_writes, limits_for, lowest_free, parse_mounts
from handler.launchers import vm_dir_for
from handler.vm_files import open_in_vm_dir, read_in_vm_dir
from tests.cluster import qemu_pid_for, wait_for

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
MIB = 1024 * 1024

HYBRID_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,nosuid,nodev,noexec,relatime,pids 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
"""
V2_MOUNTS = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n"


def small_vm(vcpus: int = 2, memory_mib: int = 512) -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.spec.vcpus, vm.spec.memory_mib = vcpus, memory_mib
    return vm


# -- unit -------------------------------------------------------------------------------------
def test_lowest_free_uid_skips_used_ones():
    assert lowest_free(set(), 200000) == 200000
    assert lowest_free({200000, 200001, 200003}, 200000) == 200002
    with pytest.raises(RuntimeError):
        lowest_free({10, 11}, 10, count=2)


def test_v1_layout_and_limits():
    layout = parse_mounts(HYBRID_MOUNTS)
    cpu = Path("/sys/fs/cgroup/cpu,cpuacct")
    assert layout.v2 is None
    assert layout.roots == [cpu, Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup/pids")]
    writes = dict(limit_writes(layout, "id1", limits_for(small_vm(), overhead_mib=256)))
    group = Path("/sys/fs/cgroup/memory") / CGROUP_PARENT / "id1"
    assert writes[group / "memory.limit_in_bytes"] == str(768 * MIB)
    assert writes[cpu / CGROUP_PARENT / "id1" / "cpu.cfs_quota_us"] == "250000"
    assert writes[cpu / CGROUP_PARENT / "id1" / "cpu.shares"] == "2048"
    assert writes[Path("/sys/fs/cgroup/pids") / CGROUP_PARENT / "id1" / "pids.max"] == str(isolation.PIDS_MAX)


def test_v2_layout_and_limits():
    layout = parse_mounts(V2_MOUNTS, v2_controllers="cpuset cpu io memory pids")
    assert layout == Layout(v2=Path("/sys/fs/cgroup"))
    group = Path("/sys/fs/cgroup") / CGROUP_PARENT / "id1"
    assert isolation.group_dirs(layout, "id1") == [group]
    assert limit_writes(layout, "id1", limits_for(small_vm(1, 128), overhead_mib=256)) == [
        (group / "memory.max", str(384 * MIB)), (group / "cpu.max", "150000 100000"),
        (group / "cpu.weight", "100"), (group / "pids.max", str(isolation.PIDS_MAX))]


def test_no_usable_hierarchy_means_no_cgroups():
    assert parse_mounts(V2_MOUNTS, v2_controllers="cpu pids").roots == []  # memory not delegated
    cgroups = isolation.Cgroups(Layout())
    assert not cgroups.usable and cgroups.create("id1", limits_for(small_vm(), overhead_mib=0)) == []


def test_handler_does_not_follow_a_vm_users_symlinks(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root only")
    (tmp_path / "launcher.log").symlink_to(secret)
    os.mkfifo(tmp_path / "launcher.pid")
    for name in ("launcher.log", "launcher.pid"):
        with pytest.raises(OSError):
            read_in_vm_dir(tmp_path / name)
    with pytest.raises(OSError):
        open_in_vm_dir(tmp_path / "launcher.log", os.O_WRONLY | os.O_APPEND)
    assert secret.read_text() == "root only"


# -- end to end -------------------------------------------------------------------------------
def ids(pid: int) -> tuple[list[int], list[int]]:
    status = Path(f"/proc/{pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
    gids = re.search(r"^Gid:\s+(.*)$", status, re.M).group(1).split()
    return [int(u) for u in uids], [int(g) for g in gids]


def memory_limit(pid: int) -> int:
    """The memory limit of pid's cgroup (v1 memory hierarchy or v2)."""
    layout = detect_layout()
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if layout.v2 is not None and controllers == "":
            return int((layout.v2 / path.lstrip("/") / "memory.max").read_text())
        if layout.v2 is None and "memory" in controllers.split(","):
            root = dict(layout.v1)["memory"]
            return int((root / path.lstrip("/") / "memory.limit_in_bytes").read_text())
    raise AssertionError(f"pid {pid} has no memory cgroup")


def attempts_as(uid: int, own: Path, other: Path) -> dict[str, str]:
    """In a child that has become uid (as a compromised launcher would be): what reaching its
    own directory and another VM's gives, 'ok' or the error's name."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no Python-level cleanup, just syscalls
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            results = {}
            for label, vm_dir in (("own", own), ("other", other)):
                for what, attempt in (("list", lambda d=vm_dir: os.listdir(d)),
                                      ("serial", lambda d=vm_dir: open(d / "serial.log", "rb").read(1)),
                                      ("socket", lambda d=vm_dir: connect(d / "launcher.sock"))):
                    try:
                        attempt()
                        results[f"{label} {what}"] = "ok"
                    except OSError as exc:
                        results[f"{label} {what}"] = type(exc).__name__
            os.write(write_end, json.dumps(results).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def connect(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))


def launcher_pid(vm_dir: Path) -> int:
    return int((vm_dir / "launcher.pid").read_text())


@pytest.mark.skipif(os.geteuid() != 0, reason="isolation needs root")
def test_two_vms_cannot_reach_each_other(cluster):
    cluster.start_controller()
    cluster.start_handler("n1", extra=["--isolation", "on"])
    for name in ("a", "b"):
        cluster.create(cluster.guest_vm(name))
    vms = {name: cluster.wait_phase(name, RUNNING, timeout=40) for name in ("a", "b")}
    dirs = {name: vm_dir_for(cluster.state_dir("n1"), vm.status.instance_uid) for name, vm in vms.items()}
    for vm in vms.values():
        wait_for(lambda vm=vm: b"CORRAL-GUEST-READY" in Path(vm.status.serial_log_path).read_bytes(),
                 timeout=30, what="the guest's readiness line")

    owners = {}
    for name, vm_dir in dirs.items():
        info = vm_dir.stat()
        assert info.st_mode & 0o777 == 0o700
        owners[name] = info.st_uid
        assert info.st_uid >= 200000 and info.st_gid == info.st_uid
        qemu = qemu_pid_for(vms[name].status.instance_uid)
        for pid in (launcher_pid(vm_dir), qemu):
            assert ids(pid) == ([info.st_uid] * 4, [info.st_gid] * 4), f"vm {name} pid {pid}"
            assert memory_limit(pid) == (128 + 256) * MIB
        # The node's capabilities cache, warmed by the handler, spared each VM the QEMU probe.
        # (Behaviour, not time: libvirt rewrites the cache files whenever it probes.)
        started = re.search(r"domain \S+ started: .*", (vm_dir / "launcher.log").read_text()).group(0)
        assert "capabilities cache used" in started, f"vm {name}: {started}"
    assert owners["a"] != owners["b"]

    results = attempts_as(owners["a"], own=dirs["a"], other=dirs["b"])
    assert results == {"own list": "ok", "own serial": "ok", "own socket": "ok",
                       "other list": "PermissionError", "other serial": "PermissionError",
                       "other socket": "PermissionError"}

    # A launcher started directly (not a warm spare) after the old one died: same user, same
    # cgroup, and it adopts the running guest.
    old = launcher_pid(dirs["a"])
    qemu = qemu_pid_for(vms["a"].status.instance_uid)
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: (pid := launcher_pid(dirs["a"])) != old and pid, timeout=15, what="a new launcher")
    assert ids(new) == ([owners["a"]] * 4, [owners["a"]] * 4)
    assert memory_limit(new) == (128 + 256) * MIB
    assert qemu_pid_for(vms["a"].status.instance_uid) == qemu
