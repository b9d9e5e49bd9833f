"""What happens when a run of a VM ends, by run strategy, as in KubeVirt. Pure functions on
VM messages, so the policy is testable without a store; the leader applies them."""
from __future__ import annotations

import random

from corral import status as vm_status
from corral.v1 import vm_pb2

RS = vm_pb2
#: Crash back-off as in KubeVirt: 10 s x n^2, with jitter, at most 300 s.
BACKOFF_BASE_SECONDS = 10.0
BACKOFF_CAP_SECONDS = 300.0
NODE_LOST = "NodeLost"


def strategy(vm: vm_pb2.VirtualMachine) -> int:
    return vm.spec.run_strategy or RS.RUN_STRATEGY_RERUN_ON_FAILURE


def wants_restart(vm: vm_pb2.VirtualMachine) -> bool:
    """Whether an ended run (Succeeded or Failed) is followed by another."""
    run_strategy = strategy(vm)
    if run_strategy == RS.RUN_STRATEGY_ALWAYS:
        return True
    if run_strategy == RS.RUN_STRATEGY_RERUN_ON_FAILURE:
        return vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED
    return False


def backoff_seconds(failures: int, *, rng: random.Random | None = None) -> float:
    """Delay before restarting after the n-th failure in a row (0 for none)."""
    if failures <= 0:
        return 0.0
    jitter = 1 + 0.1 * (rng or random).random()
    return min(BACKOFF_BASE_SECONDS * failures ** 2 * jitter, BACKOFF_CAP_SECONDS)


def mark_lost(vm: vm_pb2.VirtualMachine, node: str) -> None:
    """The run's node stopped renewing its lease and had time to fence itself: the run is over."""
    vm_status.set_phase(vm, vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED)
    vm_status.set_condition(vm, "Ready", False, NODE_LOST,
                            f"node {node} stopped renewing its lease; its guests were fenced")


def restart(vm: vm_pb2.VirtualMachine, *, now_seconds: float, rng: random.Random | None = None) -> float:
    """Turn an ended run into a new Pending one; returns the back-off applied (seconds)."""
    failed = vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED
    lost = any(c.type == "Ready" and c.reason == NODE_LOST for c in vm.status.conditions)
    vm.status.restart_count = vm.status.restart_count + 1 if failed and not lost else 0
    delay = backoff_seconds(vm.status.restart_count, rng=rng)
    vm.status.ClearField("start_after")
    if delay:
        vm.status.start_after.FromNanoseconds(int((now_seconds + delay) * 1e9))
        vm_status.set_condition(vm, "Scheduled", False, "CrashLoopBackOff",
                                f"failed {vm.status.restart_count} time(s) in a row: next start in {delay:.0f}s")
    vm.status.node_name = ""
    vm.status.instance_uid = ""
    vm.status.serial_log_path = ""
    vm.status.assignment_token = 0
    vm_status.set_phase(vm, vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING)
    return delay


def waiting_for_backoff(vm: vm_pb2.VirtualMachine, now_seconds: float) -> bool:
    return vm.status.HasField("start_after") and vm.status.start_after.ToNanoseconds() > now_seconds * 1e9
