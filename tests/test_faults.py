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

from corral.v1 import vm_pb2, vm_pb2_grpc
from handler.launchers import vm_dir_for
from tests.cluster import pids_mentioning, qemu_pid_for, wait_for

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
FAILED = vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED
NAME = re.compile(rb"guest=([a-z0-9-]+)")


def vm_name_of(cmdline: bytes) -> str | None:
    match = NAME.search(cmdline)
    return match.group(1).decode() if match else None


class CopySampler:
    """Counts, every 50 ms, the QEMU processes whose command line mentions ``root`` (a
    directory, or any text), grouped by ``key`` (default: the VM's name): the most seen at once."""

    def __init__(self, root: str, *, key=vm_name_of) -> None:
        self.root = root
        self.key = key
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
                name = self.key(cmdline)
                if name:
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


@pytest.mark.slow
@pytest.mark.parametrize("outage_seconds", [180, 30])  # the longest test of all first
def test_etcd_outage_keeps_guests_and_reconciles_after(cluster, outage_seconds):
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
        time.sleep(outage_seconds - 2)  # far longer than the node lease
        assert qemu_pid_for(vm.status.instance_uid) == qemu, "a guest was stopped during the store outage"
    finally:
        cluster.etcd.start()
    wait_for(lambda: cluster.get("survivor").status.phase == RUNNING, timeout=20, what="the API back")
    cluster.create(cluster.guest_vm("after-outage"))
    cluster.wait_phase("after-outage", RUNNING)
    time.sleep(12)  # past a full lease period after the outage: still the same guest
    assert qemu_pid_for(vm.status.instance_uid) == qemu
    assert cluster.get("survivor").status.instance_uid == vm.status.instance_uid


def test_handler_restart_with_ten_guests_readopts_them_all(cluster):
    cluster.start_controller()
    cluster.start_handler("n1", vcpus=16, memory_mib=4096)
    names = [f"g{index}" for index in range(10)]
    for name in names:
        cluster.create(cluster.guest_vm(name))
    vms = {name: cluster.wait_phase(name, RUNNING, timeout=120) for name in names}
    qemus = {name: wait_for(lambda: qemu_pid_for(vm.status.instance_uid), timeout=20, what="QEMU")
             for name, vm in vms.items()}
    cluster.kill_handler("n1")
    restarted = time.monotonic()
    cluster.start_handler("n1")
    log = cluster.base / "handler-n1.log"
    # Either way a running launcher is adopted (followed, its guest untouched): it answered the
    # first probe, or it did not yet (a busy 2-core machine) and is followed until it does.
    adopted = re.compile(r"adopted (launcher pid|a launcher that is still starting)")
    wait_for(lambda: len(adopted.findall(log.read_text())) >= 10, timeout=10,
             what="the new handler to adopt all ten launchers")
    adopted_after = time.monotonic() - restarted
    print(f"ten launchers re-adopted {adopted_after:.1f}s after the handler restarted")
    assert adopted_after < 10  # one heartbeat (the node lease TTL)
    for name, vm in vms.items():
        assert qemu_pid_for(vm.status.instance_uid) == qemus[name]
        after = cluster.get(name)
        assert after.status.phase == RUNNING and after.status.instance_uid == vm.status.instance_uid


def test_watch_from_a_compacted_revision_is_refused_and_a_relist_resumes(cluster):
    """A replica serves a watch from its watch cache's history, which outlives etcd's
    compaction; one whose history does not reach that far reads etcd's, and refuses."""
    cluster.start_controller()
    cluster.start_handler("n1")
    first = cluster.create(cluster.guest_vm("old", memory_mib=10**6))
    for index in range(3):
        cluster.create(cluster.guest_vm(f"churn-{index}", memory_mib=10**6))
    from corral.store import Store
    store = Store(endpoints=[cluster.etcd.endpoint], prefix=cluster.prefix)
    try:
        store.client.compact(store.revision())
    finally:
        store.close()
    from_cache = cluster.vms.WatchVirtualMachines(vm_pb2.WatchVirtualMachinesRequest(
        resource_version=first.metadata.resource_version))
    replayed = next(iter(from_cache))  # the first change after "old" was created
    assert replayed.resource_version > first.metadata.resource_version
    assert replayed.virtual_machine.metadata.name in {"old", "churn-0"}
    from_cache.cancel()
    late = grpc.insecure_channel(cluster.start_controller("c2"))  # its cache starts after the compaction
    stream = vm_pb2_grpc.VirtualMachineServiceStub(late).WatchVirtualMachines(vm_pb2.WatchVirtualMachinesRequest(
        resource_version=first.metadata.resource_version))
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(stream))
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "list again" in caught.value.details()
    listed = cluster.vms.ListVirtualMachines(vm_pb2.ListVirtualMachinesRequest())
    stream = cluster.vms.WatchVirtualMachines(vm_pb2.WatchVirtualMachinesRequest(
        resource_version=listed.resource_version))
    cluster.create(cluster.guest_vm("after-compaction"))
    event = next(iter(stream))
    stream.cancel()
    assert event.virtual_machine.metadata.name == "after-compaction"
    cluster.wait_phase("after-compaction", RUNNING)  # the handler's stream lived through it


class SimulatedWatchdog:
    """Stands in for the kernel's watchdog device (which would reset a real node): a FIFO the
    handler pets; when the pets stop for longer than the timeout, every process of the node is
    killed, as a reset would. The test cannot use /dev/watchdog: it would reboot the machine."""

    def __init__(self, path, *, node_root: str, timeout: float) -> None:
        self.path = str(path)
        os.mkfifo(self.path)
        self.node_root = node_root
        self.timeout = timeout
        self.last_pet = None
        self.fired_at = None
        self._stop = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._check, daemon=True).start()

    def _read(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)  # waits for the handler to open it
        while not self._stop.is_set():
            data = os.read(fd, 64)
            if data:
                self.last_pet = time.monotonic()
            else:
                time.sleep(0.05)  # no writer (the handler died): the device stays armed

    def _check(self) -> None:
        while not self._stop.is_set() and self.fired_at is None:
            if self.last_pet is not None and time.monotonic() - self.last_pet > self.timeout:
                self.fired_at = time.monotonic()
                for pid in pids_mentioning(self.node_root):
                    kill(pid)
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()


def test_node_with_dead_handler_and_launchers_is_reset_by_its_watchdog(cluster):
    """kill -9 of the handler and the launchers leaves QEMU running. With the fence guard
    turned off (tests/test_never_twice.py covers the default), only the node's watchdog can
    stop it: the VM runs elsewhere only after that, and never twice."""
    cluster.start_controller()
    watchdog = SimulatedWatchdog(cluster.node_root / "watchdog-n1", node_root=str(cluster.state_dir("n1")),
                                 timeout=6)
    try:
        cluster.start_handler("n1", extra=["--heartbeat-seconds", "6", "--watchdog-device", watchdog.path,
                                           "--fence-guard", "off"])
        cluster.create(cluster.guest_vm("pet"))
        vm = cluster.wait_phase("pet", RUNNING)
        assert vm.status.node_name == "n1"
        cluster.start_handler("n2", extra=["--heartbeat-seconds", "6"])
        qemu = wait_for(lambda: qemu_pid_for(vm.status.instance_uid), timeout=10, what="QEMU")
        pidfile = vm_dir_for(cluster.state_dir("n1"), vm.status.instance_uid) / "launcher.pid"
        with CopySampler(str(cluster.node_root)) as sampler:
            died = time.monotonic()
            cluster.kill_handler("n1")
            kill(int(pidfile.read_text()))
            time.sleep(1)
            assert os.path.exists(f"/proc/{qemu}"), "QEMU should outlive its launcher"
            moved = wait_for(lambda: (v := cluster.get("pet")).status.phase == RUNNING
                             and v.status.node_name == "n2" and v, timeout=45, what="pet running on n2")
            recovery = time.monotonic() - died
        assert watchdog.fired_at is not None and not os.path.exists(f"/proc/{qemu}")
        print(f"watchdog reset n1 {watchdog.fired_at - died:.1f}s after its handler died; "
              f"pet RUNNING on n2 after {recovery:.1f}s")
        sampler.assert_never_twice()
        assert recovery < 30 and moved.status.instance_uid != vm.status.instance_uid
    finally:
        watchdog.stop()
