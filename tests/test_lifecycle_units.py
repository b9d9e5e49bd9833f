"""The verbs' decisions and the printable status, on VM messages alone (no store, no guest)."""
from __future__ import annotations

import pytest

from controller import lifecycle
from controller.handler_api import apply_run_report
from corral import status as vm_status
from corral.v1 import handler_pb2, vm_pb2

P = vm_pb2
NOW = 1_000_000.0


def vm_in(phase: int, strategy: int = P.RUN_STRATEGY_ALWAYS, *, run: str = "run-1") -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = "pet"
    vm.metadata.uid = "uid-1"
    vm.spec.run_strategy = strategy
    vm.status.phase = phase
    if phase != P.VIRTUAL_MACHINE_PHASE_PENDING:
        vm.status.instance_uid = run
        vm.status.node_name = "n1"
    return vm


def test_stop_of_a_running_always_vm_halts_it_and_asks_its_node_to_stop_the_run():
    vm = vm_in(P.VIRTUAL_MACHINE_PHASE_RUNNING)
    assert lifecycle.stop(vm, grace_period_seconds=5, force=False)
    assert vm.spec.run_strategy == P.RUN_STRATEGY_HALTED
    request = vm.status.run_request
    assert (request.action, request.instance_uid, request.grace_period_seconds, request.force) == (
        P.RUN_ACTION_STOP, "run-1", 5, False)
    assert vm_status.printable_status(vm) == "Stopping"
    assert not lifecycle.stop(vm, grace_period_seconds=5, force=False)  # idempotent
    assert lifecycle.stop(vm, grace_period_seconds=None, force=True)  # force hurries it
    assert vm.status.run_request.force and vm.status.events[-1].reason == "StopRequested"


def test_the_run_a_stop_ended_is_not_restarted_and_start_begins_a_new_one():
    vm = vm_in(P.VIRTUAL_MACHINE_PHASE_RUNNING)
    lifecycle.stop(vm, grace_period_seconds=None, force=False)
    vm.status.phase = P.VIRTUAL_MACHINE_PHASE_SUCCEEDED
    assert not lifecycle.wants_restart(vm)
    assert vm_status.printable_status(vm) == "Stopped"
    assert lifecycle.start(vm, now_seconds=NOW)
    assert vm.spec.run_strategy == P.RUN_STRATEGY_ALWAYS
    assert vm.status.phase == P.VIRTUAL_MACHINE_PHASE_PENDING and not vm.status.instance_uid
    assert not vm.status.HasField("run_request") and not vm.status.HasField("start_after")
    assert not lifecycle.start(vm, now_seconds=NOW) or vm.status.phase == P.VIRTUAL_MACHINE_PHASE_PENDING


def test_start_of_a_running_vm_changes_nothing():
    vm = vm_in(P.VIRTUAL_MACHINE_PHASE_RUNNING)
    before = vm.SerializeToString()
    assert not lifecycle.start(vm, now_seconds=NOW)
    assert vm.SerializeToString() == before


def test_restart_asks_for_a_new_run_without_back_off():
    vm = vm_in(P.VIRTUAL_MACHINE_PHASE_RUNNING, P.RUN_STRATEGY_MANUAL)
    vm.status.restart_count = 3
    assert lifecycle.restart_run(vm, grace_period_seconds=None, force=True)
    vm.status.phase = P.VIRTUAL_MACHINE_PHASE_SUCCEEDED
    assert lifecycle.wants_restart(vm)
    assert lifecycle.restart(vm, now_seconds=NOW) == 0.0
    assert vm.status.restart_count == 0 and vm.status.phase == P.VIRTUAL_MACHINE_PHASE_PENDING


def test_a_request_for_an_older_run_does_not_apply():
    vm = vm_in(P.VIRTUAL_MACHINE_PHASE_RUNNING)
    vm.status.run_request.action = P.RUN_ACTION_STOP
    vm.status.run_request.instance_uid = "run-0"
    assert not vm_status.run_request_applies(vm)
    assert vm_status.printable_status(vm) == "Running"


@pytest.mark.parametrize("verb,phase,strategy,words", [
    ("restart", P.VIRTUAL_MACHINE_PHASE_SUCCEEDED, P.RUN_STRATEGY_MANUAL, "not running"),
    ("save", P.VIRTUAL_MACHINE_PHASE_SUCCEEDED, P.RUN_STRATEGY_MANUAL, "only a Running VM"),
    ("save", P.VIRTUAL_MACHINE_PHASE_SCHEDULED, P.RUN_STRATEGY_ALWAYS, "only a Running VM"),
    ("restore", P.VIRTUAL_MACHINE_PHASE_SUCCEEDED, P.RUN_STRATEGY_MANUAL, "no saved state"),
    ("start", P.VIRTUAL_MACHINE_PHASE_FAILED, P.RUN_STRATEGY_ONCE, "run strategy Once"),
])
def test_verbs_that_make_no_sense_are_refused_and_change_nothing(verb, phase, strategy, words):
    vm = vm_in(phase, strategy)
    before = vm.SerializeToString()
    call = {
        "restart": lambda: lifecycle.restart_run(vm, grace_period_seconds=None, force=False),
        "save": lambda: lifecycle.save(vm),
        "restore": lambda: lifecycle.restore(vm, now_seconds=NOW),
        "start": lambda: lifecycle.start(vm, now_seconds=NOW),
    }[verb]
    with pytest.raises(lifecycle.Refused, match=words):
        call()
    assert vm.SerializeToString() == before


def test_a_vm_being_deleted_takes_no_verb():
    vm = vm_in(P.VIRTUAL_MACHINE_PHASE_RUNNING)
    vm.metadata.delete_time.GetCurrentTime()
    with pytest.raises(lifecycle.Refused, match="being deleted"):
        lifecycle.stop(vm, grace_period_seconds=None, force=False)
    assert vm_status.printable_status(vm) == "Terminating"


def test_save_then_restore_moves_the_saved_state_into_a_new_run():
    vm = vm_in(P.VIRTUAL_MACHINE_PHASE_RUNNING, P.RUN_STRATEGY_RERUN_ON_FAILURE)
    assert lifecycle.save(vm) and not lifecycle.save(vm)
    report = handler_pb2.ReportVirtualMachineStatusRequest(
        phase=P.VIRTUAL_MACHINE_PHASE_SUCCEEDED, reason="Saved", saved_state_path="/saved/uid-1/run-1.save")
    vm_status.set_phase(vm, report.phase)
    apply_run_report(vm, report, new_phase=True, reason="Saved")
    assert vm.status.saved_state.path == "/saved/uid-1/run-1.save"
    assert vm.status.runs[-1].reason == "Saved" and vm.status.runs[-1].instance_uid == "run-1"
    assert not lifecycle.wants_restart(vm)
    assert vm_status.printable_status(vm) == "Saved"
    with pytest.raises(lifecycle.Refused, match="restore it"):
        lifecycle.start(vm, now_seconds=NOW)
    assert lifecycle.restore(vm, now_seconds=NOW)
    assert vm.status.phase == P.VIRTUAL_MACHINE_PHASE_PENDING and not vm.status.HasField("saved_state")
    assert vm.status.restore_from.instance_uid == "run-1"
    with pytest.raises(lifecycle.Refused, match="no saved state"):
        lifecycle.restore(vm, now_seconds=NOW)  # the saved state is used once


def test_stop_discards_a_saved_state():
    vm = vm_in(P.VIRTUAL_MACHINE_PHASE_SUCCEEDED, P.RUN_STRATEGY_MANUAL)
    vm.status.saved_state.path = "/saved/x.save"
    assert lifecycle.stop(vm, grace_period_seconds=None, force=False)
    assert not vm.status.HasField("saved_state") and vm_status.printable_status(vm) == "Stopped"


def test_stop_of_a_manual_vm_that_never_ran_ends_it():
    vm = vm_in(P.VIRTUAL_MACHINE_PHASE_PENDING, P.RUN_STRATEGY_MANUAL)
    assert lifecycle.stop(vm, grace_period_seconds=None, force=False)
    assert vm.status.phase == P.VIRTUAL_MACHINE_PHASE_SUCCEEDED and not lifecycle.wants_restart(vm)


@pytest.mark.parametrize("phase,condition,extra,expected", [
    (P.VIRTUAL_MACHINE_PHASE_PENDING, ("Scheduled", False, "Unschedulable"), None, "ErrorUnschedulable"),
    (P.VIRTUAL_MACHINE_PHASE_PENDING, ("Scheduled", False, "CrashLoopBackOff"), None, "CrashLoopBackOff"),
    (P.VIRTUAL_MACHINE_PHASE_PENDING, ("Scheduled", False, "Halted"), None, "Stopped"),
    (P.VIRTUAL_MACHINE_PHASE_PENDING, None, None, "Starting"),
    (P.VIRTUAL_MACHINE_PHASE_SCHEDULED, None, None, "Starting"),
    (P.VIRTUAL_MACHINE_PHASE_RUNNING, ("Paused", True, "PausedByUser"), None, "Paused"),
    (P.VIRTUAL_MACHINE_PHASE_RUNNING, ("Migrating", True, "Migrating"), None, "Migrating"),
    (P.VIRTUAL_MACHINE_PHASE_RUNNING, None, False, "Unknown"),
    (P.VIRTUAL_MACHINE_PHASE_RUNNING, None, True, "Running"),
    (P.VIRTUAL_MACHINE_PHASE_FAILED, None, None, "Stopped"),
    (P.VIRTUAL_MACHINE_PHASE_UNSPECIFIED, None, None, "Unknown"),
])
def test_printable_status(phase, condition, extra, expected):
    vm = vm_in(phase)
    if condition:
        vm_status.set_condition(vm, *condition)
    assert vm_status.printable_status(vm, node_ready=extra) == expected


def test_pause_reports_set_the_condition_and_an_event_once():
    vm = vm_in(P.VIRTUAL_MACHINE_PHASE_RUNNING)
    report = handler_pb2.ReportVirtualMachineStatusRequest(phase=P.VIRTUAL_MACHINE_PHASE_RUNNING, paused=True)
    assert apply_run_report(vm, report, new_phase=False, reason="Running")
    assert not apply_run_report(vm, report, new_phase=False, reason="Running")
    assert vm_status.printable_status(vm) == "Paused"
    report.paused = False
    assert apply_run_report(vm, report, new_phase=False, reason="Running")
    assert [e.reason for e in vm.status.events] == ["Paused", "Unpaused"]


def test_history_keeps_the_last_runs_and_events_are_bounded():
    vm = vm_in(P.VIRTUAL_MACHINE_PHASE_FAILED)
    for index in range(15):
        vm.status.instance_uid = f"run-{index}"
        vm_status.record_run_end(vm, "Crashed")
        vm_status.record_run_end(vm, "Crashed")  # once per run
    assert [r.instance_uid for r in vm.status.runs] == [f"run-{i}" for i in range(5, 15)]
    for index in range(40):
        vm_status.record_event(vm, "E", str(index))
    assert len(vm.status.events) == vm_status.MAX_EVENTS and vm.status.events[-1].message == "39"
