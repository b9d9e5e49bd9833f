"""Never two copies, by default: a node whose handler and launchers die or freeze together
must not keep its guests while the VM starts elsewhere. Nothing is turned on for these tests
beyond the handler's defaults (the fence guard in every QEMU, README "Never two copies").
Throughout each test a sampler reads every QEMU process 20 times a second."""
from __future__ import annotations

import os
import signal
import time

import pytest

from corral.v1 import vm_pb2
from tests.cluster import pids_mentioning, qemu_pid_for, wait_for
from tests.test_faults import CopySampler

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
HEARTBEAT = ["--heartbeat-seconds", "6"]


def launcher_pids(state_dir: str) -> list[int]:
    """The node's launchers (and spare launchers): its processes that are not QEMU."""
    pids = []
    for pid in pids_mentioning(state_dir):
        try:
            if "qemu-system" not in os.readlink(f"/proc/{pid}/exe"):
                pids.append(pid)
        except OSError:
            continue
    return pids


def running(pid: int) -> bool:
    """The process exists and is not a zombie (this machine's init reaps orphans lazily)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def fence_deadline(state_dir: str) -> float:
    """The deadline the node's handler last wrote for its QEMUs' fence guard (0: none yet)."""
    try:
        with open(os.path.join(state_dir, "fence-deadline"), "rb") as handle:
            return float(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0.0


def pet_on_n1(cluster, heartbeat: list[str] = HEARTBEAT) -> tuple[vm_pb2.VirtualMachine, int]:
    cluster.start_controller()
    cluster.start_handler("n1", extra=heartbeat)
    cluster.create(cluster.guest_vm("pet"))
    vm = cluster.wait_phase("pet", RUNNING)
    assert vm.status.node_name == "n1"
    cluster.start_handler("n2", extra=heartbeat)
    return vm, wait_for(lambda: qemu_pid_for(vm.status.instance_uid), timeout=10, what="QEMU")


def wait_moved(cluster, vm: vm_pb2.VirtualMachine, started: float) -> tuple[vm_pb2.VirtualMachine, float]:
    moved = wait_for(lambda: (v := cluster.get("pet")).status.phase == RUNNING
                     and v.status.node_name == "n2" and v, timeout=60, what="pet running on n2")
    assert moved.status.instance_uid != vm.status.instance_uid
    return moved, time.monotonic() - started


def test_killed_handler_and_launchers_leave_no_guest_behind(cluster):
    """The issue's scenario: kill -9 of the handler and every launcher (an OOM kill, a crash of
    the runtime); QEMU is left alone, yet it ends itself before the VM starts elsewhere."""
    vm, qemu = pet_on_n1(cluster)
    with CopySampler(str(cluster.node_root)) as sampler:
        launchers = launcher_pids(str(cluster.state_dir("n1")))
        assert launchers
        died = time.monotonic()
        cluster.kill_handler("n1")
        signal_all(launchers, signal.SIGKILL)
        time.sleep(0.5)
        assert running(qemu), "QEMU outlives its launcher and handler for a while"
        wait_for(lambda: not running(qemu), timeout=15, what="the orphaned QEMU to end itself")
        fenced = time.monotonic() - died
        moved, recovery = wait_moved(cluster, vm, died)
        time.sleep(2)
    print(f"handler and launchers killed: QEMU ended itself after {fenced:.1f}s; "
          f"pet RUNNING on n2 after {recovery:.1f}s")
    sampler.assert_never_twice()
    assert qemu_pid_for(vm.status.instance_uid) is None
    assert cluster.get("pet").status.instance_uid == moved.status.instance_uid


def test_frozen_handler_and_launchers_leave_no_guest_behind(cluster):
    """kill -STOP of the handler and every launcher (a frozen node agent), later woken: the
    guest ended on its own, and nothing woken brings it back."""
    vm, qemu = pet_on_n1(cluster)
    handler = cluster.handlers["n1"]
    frozen = [handler.pid, *launcher_pids(str(cluster.state_dir("n1")))]
    with CopySampler(str(cluster.node_root)) as sampler:
        stopped = time.monotonic()
        signal_all(frozen, signal.SIGSTOP)
        try:
            wait_for(lambda: not running(qemu), timeout=15, what="the frozen node's QEMU to end")
            fenced = time.monotonic() - stopped
            moved, recovery = wait_moved(cluster, vm, stopped)
        finally:
            signal_all(frozen, signal.SIGCONT)
        time.sleep(5)  # the woken handler finds its lease gone; its launchers find their guest gone
    print(f"handler and launchers frozen: QEMU ended itself after {fenced:.1f}s; "
          f"pet RUNNING on n2 after {recovery:.1f}s")
    sampler.assert_never_twice()
    assert cluster.get("pet").status.instance_uid == moved.status.instance_uid
    assert qemu_pid_for(vm.status.instance_uid) is None


@pytest.mark.slow
def test_crash_looping_handler_until_the_start_limit_leaves_no_guest_behind(cluster):
    """The handler crashes again and again, each time with its launchers (an OOM kill of the
    node agent), and is restarted as systemd would (RestartSec=2s) until systemd's start limit
    (5 starts) gives up. While it comes back in time each new handler re-adopts the guest;
    once it stays dead, the guest ends before the VM runs elsewhere. Each handler runs until it
    has renewed the fencing deadline (a handler killed before that, again and again, rightly
    lets the guest's deadline pass); the 10 s heartbeat leaves a restart that is slow on a
    loaded machine time to come back."""
    heartbeat = ["--heartbeat-seconds", "10"]
    vm, qemu = pet_on_n1(cluster, heartbeat)
    state_dir = str(cluster.state_dir("n1"))
    with CopySampler(str(cluster.node_root)) as sampler:
        for attempt in range(5):
            time.sleep(1.0)  # it runs a moment, then crashes
            launchers = launcher_pids(state_dir)
            last_deadline = fence_deadline(state_dir)
            cluster.kill_handler("n1")
            signal_all(launchers, signal.SIGKILL)
            if attempt < 4:
                time.sleep(2.0)  # RestartSec
                cluster.start_handler("n1")  # with the arguments it first had
                wait_for(lambda: launcher_pids(state_dir), timeout=10, what="a launcher adopting the guest")
                assert qemu_pid_for(vm.status.instance_uid) == qemu, "a restarted handler re-adopts the guest"
                wait_for(lambda: fence_deadline(state_dir) > last_deadline, timeout=10,
                         what="the restarted handler to renew the fencing deadline")
        died = time.monotonic()  # systemd gave up
        wait_for(lambda: not running(qemu), timeout=20, what="the orphaned QEMU to end itself")
        fenced = time.monotonic() - died
        moved, recovery = wait_moved(cluster, vm, died)
        time.sleep(2)
    print(f"handler crash loop: the guest survived 4 restarts; after the last crash QEMU ended itself "
          f"after {fenced:.1f}s and pet was RUNNING on n2 after {recovery:.1f}s")
    sampler.assert_never_twice()
    assert cluster.get("pet").status.instance_uid == moved.status.instance_uid
