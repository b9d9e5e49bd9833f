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


def settled(vm: vm_pb2.VirtualMachine) -> bool:
    """A live run on a node, not being deleted, not halted: nothing for the scheduler to decide
    while its node lives (most VMs, most of the time)."""
    return (vm.status.phase in vm_status.LIVE_PHASES and bool(vm.status.node_name)
            and not vm.metadata.HasField("delete_time") and strategy(vm) != RS.RUN_STRATEGY_HALTED)


def wants_restart(vm: vm_pb2.VirtualMachine) -> bool:
    """Whether an ended run (Succeeded or Failed) is followed by another."""
    if vm_status.run_request_applies(vm):
        # Asked of this run by a person: restart means another run, stop and save mean none.
        return vm.status.run_request.action == RS.RUN_ACTION_RESTART
    if vm.status.HasField("saved_state"):
        return False
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
    message = f"node {node} stopped renewing its lease; its guests were fenced"
    vm_status.set_phase(vm, vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED)
    vm_status.set_condition(vm, "Ready", False, NODE_LOST, message)
    vm_status.record_run_end(vm, NODE_LOST, message)
    vm_status.record_event(vm, NODE_LOST, f"run {vm.status.instance_uid} is over: {message}", warning=True)


def restart(vm: vm_pb2.VirtualMachine, *, now_seconds: float, rng: random.Random | None = None) -> float:
    """Turn an ended run into a new Pending one; returns the back-off applied (seconds)."""
    failed = vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED
    lost = any(c.type == "Ready" and c.reason == NODE_LOST for c in vm.status.conditions)
    asked = vm_status.run_request_applies(vm)  # a person's restart: no back-off
    vm.status.restart_count = vm.status.restart_count + 1 if failed and not lost and not asked else 0
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
    _clear_run_state(vm)
    vm_status.set_phase(vm, vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING)
    return delay


def _clear_run_state(vm: vm_pb2.VirtualMachine) -> None:
    """What belonged to the run that ended."""
    for field in ("run_request", "restore_from", "guest", "run_start_time", "migration_target",
                  "instance_lock_lease"):
        vm.status.ClearField(field)
    vm.status.ClearField("current_vcpus")  # hotplug: what the ended run had plugged
    vm.status.ClearField("current_memory_mib")
    for condition in vm.status.conditions:
        if condition.type in ("Paused", "AgentConnected", "Migrating") and condition.status:
            condition.status = False
            condition.reason = "RunEnded"
            condition.message = ""


# -- verbs: pure decisions on the stored VM; each returns whether it changed anything --------

class Refused(Exception):
    """The verb makes no sense for the VM as it is (FAILED_PRECONDITION)."""


def is_live(vm: vm_pb2.VirtualMachine) -> bool:
    return vm.status.phase in vm_status.LIVE_PHASES


def _not_deleting(vm: vm_pb2.VirtualMachine, verb: str) -> None:
    if vm.metadata.HasField("delete_time"):
        raise Refused(f"cannot {verb} VirtualMachine {vm.metadata.name!r}: it is being deleted")


def start(vm: vm_pb2.VirtualMachine, *, now_seconds: float) -> bool:
    """Start a stopped VM; a running one is left alone (idempotent)."""
    _not_deleting(vm, "start")
    name = vm.metadata.name
    if vm.status.HasField("saved_state"):
        raise Refused(f"VirtualMachine {name!r} is Saved: restore it (corral restore {name}), "
                      "or stop it to discard the saved state")
    if is_live(vm):
        if vm_status.run_request_applies(vm):
            raise Refused(f"VirtualMachine {name!r} is stopping: start it once it has stopped")
        return False
    changed = False
    if strategy(vm) == RS.RUN_STRATEGY_HALTED:
        vm.spec.run_strategy = RS.RUN_STRATEGY_ALWAYS
        changed = True
    if vm.status.phase in vm_status.TERMINAL_PHASES:
        if strategy(vm) == RS.RUN_STRATEGY_ONCE:
            raise Refused(f"VirtualMachine {name!r} has run strategy Once: it ran and is not started "
                          "again (change its run strategy first)")
        restart(vm, now_seconds=now_seconds)
        vm.status.restart_count = 0
        vm.status.ClearField("start_after")
        changed = True
    elif vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING and vm.status.HasField("start_after"):
        vm.status.ClearField("start_after")  # a person's start skips the crash back-off
        changed = True
    if changed:
        vm_status.record_event(vm, "StartRequested", "start requested")
    return changed


def stop(vm: vm_pb2.VirtualMachine, *, grace_period_seconds: int | None, force: bool) -> bool:
    """Stop the current run and keep the VM stopped."""
    _not_deleting(vm, "stop")
    changed = False
    if strategy(vm) in (RS.RUN_STRATEGY_ALWAYS, RS.RUN_STRATEGY_RERUN_ON_FAILURE):
        vm.spec.run_strategy = RS.RUN_STRATEGY_HALTED  # as KubeVirt does, so nothing restarts it
        changed = True
    if vm.status.HasField("saved_state"):
        vm.status.ClearField("saved_state")
        vm_status.record_event(vm, "SavedStateDiscarded", "stopped: the saved state will not be restored")
        return True
    if is_live(vm):
        changed |= _request(vm, RS.RUN_ACTION_STOP, grace_period_seconds, force)
    elif vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING and strategy(vm) != RS.RUN_STRATEGY_HALTED:
        # Manual or Once, not started yet: it ends without having run.
        vm_status.set_phase(vm, vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED)
        vm.status.ClearField("start_after")
        changed = True
    if strategy(vm) == RS.RUN_STRATEGY_HALTED and vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING:
        changed |= vm_status.set_condition(vm, "Scheduled", False, "Halted", "stopped: run strategy Halted")
    if changed:
        vm_status.record_event(vm, "StopRequested", _how("stop", grace_period_seconds, force))
    return changed


def restart_run(vm: vm_pb2.VirtualMachine, *, grace_period_seconds: int | None, force: bool) -> bool:
    """Stop the current run and start a new one."""
    _not_deleting(vm, "restart")
    if not is_live(vm):
        raise Refused(f"VirtualMachine {vm.metadata.name!r} is not running "
                      f"({vm_status.printable_status(vm)}): use start")
    changed = _request(vm, RS.RUN_ACTION_RESTART, grace_period_seconds, force)
    if changed:
        vm_status.record_event(vm, "RestartRequested", _how("restart", grace_period_seconds, force))
    return changed


def save(vm: vm_pb2.VirtualMachine) -> bool:
    """Save the running guest's memory and end the run."""
    _not_deleting(vm, "save")
    if vm.status.HasField("saved_state"):
        return False
    if vm.status.phase != vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING:
        raise Refused(f"VirtualMachine {vm.metadata.name!r} is {vm_status.printable_status(vm)}: "
                      "only a Running VM can be saved")
    request = vm.status.run_request
    if vm_status.run_request_applies(vm):
        if request.action == RS.RUN_ACTION_SAVE:
            return False
        raise Refused(f"VirtualMachine {vm.metadata.name!r} is already stopping")
    _request(vm, RS.RUN_ACTION_SAVE, None, False)
    vm_status.record_event(vm, "SaveRequested", "saving the guest's memory")
    return True


def restore(vm: vm_pb2.VirtualMachine, *, now_seconds: float) -> bool:
    """Start a new run that resumes from the saved state."""
    _not_deleting(vm, "restore")
    if not vm.status.HasField("saved_state"):
        if is_live(vm) and vm.status.HasField("restore_from"):
            return False  # already restoring or restored
        raise Refused(f"VirtualMachine {vm.metadata.name!r} has no saved state "
                      f"({vm_status.printable_status(vm)}): save it first")
    saved = vm_pb2.SavedState()
    saved.CopyFrom(vm.status.saved_state)
    if strategy(vm) == RS.RUN_STRATEGY_HALTED:
        vm.spec.run_strategy = RS.RUN_STRATEGY_ALWAYS
    restart(vm, now_seconds=now_seconds)
    vm.status.restart_count = 0
    vm.status.ClearField("start_after")
    vm.status.ClearField("saved_state")
    vm.status.restore_from.CopyFrom(saved)
    vm_status.record_event(vm, "RestoreRequested", f"resuming from {saved.path} (saved on {saved.node_name})")
    return True


def _request(vm: vm_pb2.VirtualMachine, action: int, grace: int | None, force: bool) -> bool:
    """Ask the run's node to end the run; a repeated request changes nothing unless it adds force."""
    current = vm.status.run_request
    if vm_status.run_request_applies(vm):
        if current.action == RS.RUN_ACTION_SAVE and action != RS.RUN_ACTION_SAVE:
            raise Refused(f"VirtualMachine {vm.metadata.name!r} is being saved")
        hurry = force and not current.force
        if current.action == action and not hurry:
            return False
        if action == RS.RUN_ACTION_STOP or hurry:
            current.action = action if action == RS.RUN_ACTION_STOP else current.action
            current.force = current.force or force
            return True
        return False  # a restart asked while a stop is in progress: the stop wins
    if grace is None and vm.spec.HasField("termination_grace_period_seconds"):
        grace = vm.spec.termination_grace_period_seconds
    vm.status.run_request.CopyFrom(vm_pb2.RunRequest(
        action=action, instance_uid=vm.status.instance_uid, force=force,
        grace_period_seconds=grace, request_time=vm_status.now()))
    return True


def _how(verb: str, grace: int | None, force: bool) -> str:
    if force:
        return f"{verb} requested: destroying the guest at once"
    return f"{verb} requested" + (f" (grace period {grace}s)" if grace is not None else "")


def waiting_for_backoff(vm: vm_pb2.VirtualMachine, now_seconds: float) -> bool:
    return vm.status.HasField("start_after") and vm.status.start_after.ToNanoseconds() > now_seconds * 1e9


def check_guest_action(vm: vm_pb2.VirtualMachine, verb: str) -> None:
    """Pause, unpause, soft-reboot and reset act on a Running run that is not being stopped."""
    _not_deleting(vm, verb)
    if vm.status.phase != vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING:
        raise Refused(f"cannot {verb} VirtualMachine {vm.metadata.name!r}: it is "
                      f"{vm_status.printable_status(vm)}, not Running")
    if vm_status.run_request_applies(vm):
        raise Refused(f"cannot {verb} VirtualMachine {vm.metadata.name!r}: its run is being stopped")
