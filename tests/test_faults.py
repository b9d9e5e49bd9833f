"""Fault injection on real processes: a launcher, QEMU, a whole node, a hung handler, etcd.
Throughout each test a sampler watches the QEMU processes: no VM may ever run twice."""
from __future__ import annotations

import os
import re
import signal
import threading
import time

import grpc
import pytest

from corral.v1 import vm_pb2
from handler.launchers import vm_dir_for
from tests.cluster import pids_mentioning, qemu_pid_for, wait_for

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
FAILED = vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED
NAME = re.compile(rb"guest=([a-z0-9-]+)")


class CopySampler:
    """Counts, every 50 ms, the QEMU processes of each VM name below a directory."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.worst: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "CopySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            counts: dict[str, int] = {}
            for pid in pids_mentioning(self.root):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as handle:
                        cmdline = handle.read()
                except OSError:
                    continue
                if b"qemu-system" not in cmdline.split(b"\0", 1)[0]:
                    continue
                match = NAME.search(cmdline)
                if match:
                    name = match.group(1).decode()
                    counts[name] = counts.get(name, 0) + 1
            for name, count in counts.items():
                self.worst[name] = max(self.worst.get(name, 0), count)
            time.sleep(0.05)

    def assert_never_twice(self) -> None:
        twice = {name: count for name, count in self.worst.items() if count > 1}
        assert not twice, f"VMs seen running more than once at the same time: {twice}"


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_killed_launcher_is_replaced_and_the_guest_keeps_running(cluster):
    cluster.start_controller()
    cluster.start_handler("n1")
    cluster.create(cluster.guest_vm("steady"))
    vm = cluster.wait_phase("steady", RUNNING)
    qemu = wait_for(lambda: qemu_pid_for(vm.status.instance_uid), timeout=10, what="QEMU")
    pidfile = vm_dir_for(cluster.state_dir("n1"), vm.status.instance_uid) / "launcher.pid"
    launcher = int(pidfile.read_text())
    assert launcher != qemu and os.path.exists(f"/proc/{launcher}")
    kill(launcher)
    time.sleep(4)  # the handler notices and starts a launcher that adopts the domain
    assert qemu_pid_for(vm.status.instance_uid) == qemu
    after = cluster.get("steady")
    assert after.status.phase == RUNNING and after.status.instance_uid == vm.status.instance_uid


@pytest.mark.parametrize("strategy,restarts", [(vm_pb2.RUN_STRATEGY_RERUN_ON_FAILURE, True),
                                               (vm_pb2.RUN_STRATEGY_ONCE, False)])
def test_killed_qemu_is_handled_per_run_strategy(cluster, strategy, restarts):
    cluster.start_controller()
    cluster.start_handler("n1")
    spec = cluster.guest_vm("crashy")
    spec.spec.run_strategy = strategy
    cluster.create(spec)
    vm = cluster.wait_phase("crashy", RUNNING)
    kill(wait_for(lambda: qemu_pid_for(vm.status.instance_uid), timeout=10, what="QEMU"))
    if restarts:
        again = wait_for(lambda: (v := cluster.get("crashy")).status.phase == RUNNING
                         and v.status.instance_uid != vm.status.instance_uid and v, timeout=60,
                         what="a new run after the crash")
        assert again.status.restart_count == 1
        assert qemu_pid_for(again.status.instance_uid)
    else:
        failed = cluster.wait_phase("crashy", FAILED, timeout=30)
        ready = next(c for c in failed.status.conditions if c.type == "Ready")
        assert ready.reason == "Crashed" and ready.message
        time.sleep(3)
        assert cluster.get("crashy").status.phase == FAILED


def test_dead_node_runs_its_vms_elsewhere_never_twice(cluster):
    cluster.start_controller()
    cluster.start_handler("n1", extra=["--heartbeat-seconds", "6"])
    names = ["pet-a", "pet-b"]
    for name in names:
        cluster.create(cluster.guest_vm(name))
    for name in names:
        assert cluster.wait_phase(name, RUNNING).status.node_name == "n1"
    cluster.start_handler("n2", extra=["--heartbeat-seconds", "6"])
    with CopySampler(str(cluster.node_root)) as sampler:
        # The node dies: its handler, launchers and guests all at once.
        root = str(cluster.state_dir("n1"))
        cluster.kill_handler("n1")
        for pid in pids_mentioning(root):
            kill(pid)
        died = time.monotonic()
        moved = {}
        for name in names:
            moved[name] = wait_for(lambda: (v := cluster.get(name)).status.phase == RUNNING
                                   and v.status.node_name == "n2" and v, timeout=45, what=f"{name} on n2")
        recovery = time.monotonic() - died
        print(f"node n1 died; its VMs were RUNNING on n2 after {recovery:.1f}s")
        assert recovery < 30
    sampler.assert_never_twice()
    assert all(v.status.phase_transitions[-1].phase == RUNNING for v in moved.values())


def test_hung_node_fences_its_guests_before_they_run_elsewhere(cluster):
    cluster.start_controller()
    cluster.start_handler("n1", extra=["--heartbeat-seconds", "6"])
    cluster.start_handler("n2", extra=["--heartbeat-seconds", "6"], labels="spare=yes")
    cluster.create(cluster.guest_vm("pet"))
    vm = wait_for(lambda: (v := cluster.get("pet")).status.phase == RUNNING and v, timeout=60, what="pet running")
    first_node = vm.status.node_name
    other = "n2" if first_node == "n1" else "n1"
    old_qemu = wait_for(lambda: qemu_pid_for(vm.status.instance_uid), timeout=10, what="QEMU")
    handler = cluster.handlers[first_node]
    with CopySampler(str(cluster.node_root)) as sampler:
        handler.send_signal(signal.SIGSTOP)  # the handler hangs: no lease renewals, no reports
        try:
            wait_for(lambda: not os.path.exists(f"/proc/{old_qemu}"), timeout=15, what="the hung node's guest fenced")
            moved = wait_for(lambda: (v := cluster.get("pet")).status.phase == RUNNING
                             and v.status.node_name == other and v, timeout=40, what="pet running elsewhere")
        finally:
            handler.send_signal(signal.SIGCONT)
        # The woken handler finds its lease gone and cleans up; the VM stays where it moved.
        time.sleep(4)
    sampler.assert_never_twice()
    assert cluster.get("pet").status.instance_uid == moved.status.instance_uid
    assert not pids_mentioning(vm.status.instance_uid)


def test_etcd_outage_keeps_guests_and_reconciles_after(cluster):
    cluster.start_controller()
    cluster.start_handler("n1")
    cluster.create(cluster.guest_vm("survivor"))
    vm = cluster.wait_phase("survivor", RUNNING)
    qemu = wait_for(lambda: qemu_pid_for(vm.status.instance_uid), timeout=10, what="QEMU")
    cluster.etcd.stop()
    try:
        time.sleep(2)
        with pytest.raises(grpc.RpcError) as caught:
            cluster.vms.ListVirtualMachines(vm_pb2.ListVirtualMachinesRequest(), timeout=15)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "etcd" in caught.value.details()
        time.sleep(28)  # 30 s without the store, three times the node lease
        assert qemu_pid_for(vm.status.instance_uid) == qemu, "a guest was stopped during the store outage"
    finally:
        cluster.etcd.start()
    wait_for(lambda: cluster.get("survivor").status.phase == RUNNING, timeout=20, what="the API back")
    cluster.create(cluster.guest_vm("after-outage"))
    cluster.wait_phase("after-outage", RUNNING)
    time.sleep(12)  # past a full lease period after the outage: still the same guest
    assert qemu_pid_for(vm.status.instance_uid) == qemu
    assert cluster.get("survivor").status.instance_uid == vm.status.instance_uid
