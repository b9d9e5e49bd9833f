"""VM lifecycle on real guests (TCG): stop, start, restart, run strategies after crashes,
save and restore across nodes, and the status codes of verbs that make no sense."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from corral.v1 import vm_pb2
from tests.cluster import pids_mentioning, qemu_pid_for, wait_for
from tests.test_console import Console

P = vm_pb2
RUNNING = P.VIRTUAL_MACHINE_PHASE_RUNNING
SUCCEEDED = P.VIRTUAL_MACHINE_PHASE_SUCCEEDED
FAILED = P.VIRTUAL_MACHINE_PHASE_FAILED
READY_LINE = b"CORRAL-GUEST-READY"


def act(cluster, verb: str, name: str, **fields) -> vm_pb2.VirtualMachine:
    request = getattr(vm_pb2, f"{verb}VirtualMachineRequest")(name=name, **fields)
    return getattr(cluster.vms, f"{verb}VirtualMachine")(request, timeout=10).virtual_machine


def refused(cluster, verb: str, name: str, **fields) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        act(cluster, verb, name, **fields)
    return caught.value


def running_run(cluster, name: str, *, other_than: str = "", timeout: float = 90) -> vm_pb2.VirtualMachine:
    """The VM once a run (other than the given one) is Running and its guest has booted."""
    def check():
        vm = cluster.get(name)
        if vm.status.phase != RUNNING or vm.status.instance_uid == other_than:
            return None
        log = Path(vm.status.serial_log_path)
        return vm if log.exists() and READY_LINE in log.read_bytes() else None
    return wait_for(check, timeout=timeout, what=f"a new run of {name} to boot")


def four_strategies_running(cluster) -> tuple[dict[str, int], dict[str, str]]:
    """A VM per run strategy but Halted, all booted: (strategy by name, run uid by name)."""
    cluster.start_controller()
    cluster.start_handler("n1")
    strategies = {"always": P.RUN_STRATEGY_ALWAYS, "rerun": P.RUN_STRATEGY_RERUN_ON_FAILURE,
                  "manual": P.RUN_STRATEGY_MANUAL, "once": P.RUN_STRATEGY_ONCE}
    for name, strategy in strategies.items():
        vm = cluster.guest_vm(name)
        vm.spec.run_strategy = strategy
        cluster.create(vm)
    return strategies, {name: running_run(cluster, name, timeout=120).status.instance_uid for name in strategies}


def test_stop_start_restart_keep_one_run_at_a_time_and_a_history(cluster):
    cluster.start_controller()
    cluster.start_handler("n1")
    cluster.create(cluster.guest_vm("pet"))
    first = running_run(cluster, "pet")
    assert first.status.printable_status == "Running"

    stopping = act(cluster, "Stop", "pet", grace_period_seconds=60)
    assert stopping.spec.run_strategy == P.RUN_STRATEGY_HALTED  # Always/RerunOnFailure become Halted
    assert stopping.status.printable_status == "Stopping"
    act(cluster, "Stop", "pet")  # idempotent
    stopped = cluster.wait_phase("pet", SUCCEEDED, timeout=50)  # well within the grace period:
    assert b"CORRAL-GUEST-POWER-BUTTON" in Path(first.status.serial_log_path).read_bytes()  # the guest's acpid
    assert "powered off" in stopped.status.runs[-1].message
    assert qemu_pid_for(first.status.instance_uid) is None
    time.sleep(2)  # nothing restarts it
    stopped = cluster.get("pet")
    assert stopped.status.phase == SUCCEEDED and stopped.status.printable_status == "Stopped"
    assert [(r.instance_uid, r.reason) for r in stopped.status.runs] == [(first.status.instance_uid, "Stopped")]

    for verb in ("Restart", "Save", "Restore"):  # pause etc.: tests/test_guest_actions.py
        error = refused(cluster, verb, "pet")
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, (verb, error.details())
    assert refused(cluster, "Stop", "nope").code() == grpc.StatusCode.NOT_FOUND
    assert refused(cluster, "Stop", "Bad_Name").code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused(cluster, "Stop", "pet", grace_period_seconds=-1).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert cluster.get("pet").metadata.resource_version == stopped.metadata.resource_version  # refusals change nothing

    started = act(cluster, "Start", "pet")
    assert started.spec.run_strategy == P.RUN_STRATEGY_ALWAYS
    second = running_run(cluster, "pet", other_than=first.status.instance_uid)
    act(cluster, "Start", "pet")  # idempotent on a running VM
    assert cluster.get("pet").status.instance_uid == second.status.instance_uid

    act(cluster, "Restart", "pet", force=True)
    third = running_run(cluster, "pet", other_than=second.status.instance_uid)
    assert qemu_pid_for(second.status.instance_uid) is None
    runs = [(r.instance_uid, r.reason) for r in third.status.runs]
    assert runs == [(first.status.instance_uid, "Stopped"), (second.status.instance_uid, "Stopped")]
    reasons = [event.reason for event in third.status.events]
    for expected in ("Scheduled", "Started", "StopRequested", "StartRequested", "RestartRequested", "Restarting"):
        assert expected in reasons, (expected, reasons)


@pytest.mark.slow
def test_a_crash_is_handled_per_run_strategy_with_back_off(cluster):
    strategies, runs = four_strategies_running(cluster)

    # A launcher that dies is not the end of the run: a new launcher adopts the same guest.
    launcher = [pid for pid in pids_mentioning(runs["once"].replace("-", "")[:12]) if pid != qemu_pid_for(runs["once"])]
    for pid in launcher:
        os.kill(pid, signal.SIGKILL)
    for name, uid in runs.items():
        os.kill(qemu_pid_for(uid), signal.SIGKILL)
    for name in ("manual", "once"):
        vm = cluster.wait_phase(name, FAILED, timeout=30)
        assert vm.status.runs[-1].instance_uid == runs[name]
        assert vm.status.printable_status == "Stopped"
    backed_off = wait_for(lambda: (vm := cluster.get("rerun")).status.printable_status == "CrashLoopBackOff" and vm,
                          timeout=30, what="rerun to show CrashLoopBackOff")
    assert backed_off.status.restart_count == 1
    for name in ("always", "rerun"):
        running_run(cluster, name, other_than=runs[name], timeout=90)
    for name in ("manual", "once"):
        assert cluster.get(name).status.phase == FAILED  # never restarted
    error = refused(cluster, "Start", "once")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "Once" in error.details()
    act(cluster, "Start", "manual")  # Manual: started by a person
    running_run(cluster, "manual", other_than=runs["manual"], timeout=90)


def test_save_and_restore_on_another_node_resumes_the_guest(cluster):
    save_dir = cluster.node_root / "shared-saves"  # the VMs' users must reach it (not under /tmp/pytest-of-root)
    cluster.start_controller()
    cluster.start_handler("n1", labels="name=n1", extra=["--save-dir", str(save_dir)])
    cluster.start_handler("n2", labels="name=n2", extra=["--save-dir", str(save_dir)])
    vm = cluster.guest_vm("sleeper", node_selector={"name": "n1"})
    cluster.create(vm)
    first = running_run(cluster, "sleeper")
    assert first.status.node_name == "n1"

    console = Console(cluster.vms, "sleeper")
    try:
        before = float(console.run(b"cut -d' ' -f1 /proc/uptime", rb"\n(\d+\.\d+)\r?\n").group(1))
    finally:
        console.close()

    act(cluster, "Save", "sleeper")
    saved = wait_for(lambda: (vm := cluster.get("sleeper")).status.printable_status == "Saved" and vm,
                     timeout=60, what="the VM to be Saved")
    path = Path(saved.status.saved_state.path)
    assert path.is_file() and path.is_relative_to(save_dir) and saved.status.saved_state.node_name == "n1"
    assert qemu_pid_for(first.status.instance_uid) is None
    assert saved.status.runs[-1].reason == "Saved"
    assert refused(cluster, "Start", "sleeper").code() == grpc.StatusCode.FAILED_PRECONDITION

    # Restore on the other node: the spec may change while the VM has no run.
    saved.spec.node_selector["name"] = "n2"
    cluster.vms.UpdateVirtualMachine(vm_pb2.UpdateVirtualMachineRequest(virtual_machine=saved), timeout=10)
    act(cluster, "Restore", "sleeper")
    restored = wait_for(lambda: (vm := cluster.get("sleeper")).status.phase == RUNNING and vm,
                        timeout=60, what="the restored run to be Running")
    assert restored.status.node_name == "n2" and restored.status.instance_uid != first.status.instance_uid
    assert restored.status.restore_from.path == str(path)
    # A resumed guest does not boot: its new serial log never shows the boot's readiness line.
    time.sleep(5)
    assert READY_LINE not in Path(restored.status.serial_log_path).read_bytes()
    assert qemu_pid_for(first.status.instance_uid) is not None  # the domain keeps the saved run's uuid
    console = Console(cluster.vms, "sleeper")
    try:
        after = float(console.run(b"cut -d' ' -f1 /proc/uptime", rb"\n(\d+\.\d+)\r?\n").group(1))
    finally:
        console.close()
    assert after > before, f"the guest's uptime went from {before} to {after}: it rebooted"
    wait_for(lambda: not path.exists(), timeout=20, what="the used saved file to be removed")
    again = act(cluster, "Restore", "sleeper")  # idempotent while the restored run lives
    assert again.status.instance_uid == restored.status.instance_uid


def test_a_guest_that_powers_off_is_handled_per_run_strategy(cluster):
    strategies, runs = four_strategies_running(cluster)
    for name in strategies:
        console = Console(cluster.vms, name)
        try:
            console.expect(rb"# ", poke=True, timeout=60)
            console.send(b"poweroff -f\n")
            console.ended.wait(30)
        finally:
            console.close()
    for name in ("rerun", "manual", "once"):
        vm = cluster.wait_phase(name, SUCCEEDED, timeout=30)
        assert vm.status.runs[-1].reason == "GuestShutdown" and vm.status.printable_status == "Stopped"
    always = running_run(cluster, "always", other_than=runs["always"])
    assert always.status.restart_count == 0 and not always.status.HasField("start_after")  # no back-off
    time.sleep(3)
    for name in ("rerun", "manual", "once"):
        assert cluster.get(name).status.phase == SUCCEEDED  # not restarted


def test_pause_unpause_reset_and_soft_reboot_through_the_api(cluster):
    cluster.start_controller()
    cluster.start_handler("n1")
    cluster.create(cluster.guest_vm("busy"))
    first = running_run(cluster, "busy")
    log = Path(first.status.serial_log_path)

    act(cluster, "Pause", "busy")
    act(cluster, "Pause", "busy")  # idempotent
    wait_for(lambda: cluster.get("busy").status.printable_status == "Paused", timeout=20, what="Paused")
    act(cluster, "Unpause", "busy")
    wait_for(lambda: cluster.get("busy").status.printable_status == "Running", timeout=20, what="Running again")

    act(cluster, "Reset", "busy")  # the reset button: the guest boots again, in the same run
    wait_for(lambda: log.read_bytes().count(READY_LINE) >= 2, timeout=60, what="a second boot after reset")
    act(cluster, "SoftReboot", "busy")  # ACPI: the guest powers off, libvirt turns that into a reboot
    wait_for(lambda: log.read_bytes().count(READY_LINE) >= 3, timeout=90, what="a third boot after soft-reboot")
    vm = cluster.get("busy")
    assert vm.status.instance_uid == first.status.instance_uid and vm.status.phase == RUNNING
    reasons = [event.reason for event in vm.status.events]
    for expected in ("PauseRequested", "Paused", "UnpauseRequested", "Unpaused", "Reset", "SoftRebootRequested"):
        assert expected in reasons, (expected, reasons)
    act(cluster, "Stop", "busy", force=True)
    cluster.wait_phase("busy", SUCCEEDED, timeout=30)
    error = refused(cluster, "Pause", "busy")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "not Running" in error.details()
