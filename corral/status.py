"""Changes to a VM's status that every writer makes the same way: phases with their
transition times, and conditions that keep their transition time while unchanged."""
from __future__ import annotations

from google.protobuf import timestamp_pb2

from corral.v1 import meta_pb2, vm_pb2

TERMINAL_PHASES = frozenset({vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED, vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED})
MAX_TRANSITIONS = 50


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def phase_name(phase: int) -> str:
    """VIRTUAL_MACHINE_PHASE_RUNNING -> Running."""
    return vm_pb2.VirtualMachinePhase.Name(phase).removeprefix("VIRTUAL_MACHINE_PHASE_").title()


def run_strategy_name(value: int) -> str:
    """RUN_STRATEGY_RERUN_ON_FAILURE -> RerunOnFailure (unset: the default, RerunOnFailure)."""
    if value not in vm_pb2.RunStrategy.values():
        return "Unknown"
    name = vm_pb2.RunStrategy.Name(value or vm_pb2.RUN_STRATEGY_RERUN_ON_FAILURE)
    return "".join(part.title() for part in name.removeprefix("RUN_STRATEGY_").split("_"))


def set_phase(vm: vm_pb2.VirtualMachine, phase: int) -> bool:
    """Enter phase, recording when; False if the VM was already in it."""
    if vm.status.phase == phase:
        return False
    vm.status.phase = phase
    vm.status.phase_transitions.add(phase=phase, time=now())
    if len(vm.status.phase_transitions) > MAX_TRANSITIONS:
        del vm.status.phase_transitions[0]
    return True


def set_condition(vm: vm_pb2.VirtualMachine, type_: str, status: bool, reason: str = "", message: str = "") -> bool:
    """Set a condition; its transition time changes only when its status does."""
    for condition in vm.status.conditions:
        if condition.type == type_:
            if (condition.status, condition.reason, condition.message) == (status, reason, message):
                return False
            if condition.status != status:
                condition.last_transition_time.CopyFrom(now())
            condition.status, condition.reason, condition.message = status, reason, message
            return True
    vm.status.conditions.append(meta_pb2.Condition(
        type=type_, status=status, reason=reason, message=message, last_transition_time=now()))
    return True
