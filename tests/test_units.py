"""Unit tests of the pure parts: validation, selectors, scheduling fit, page tokens, status."""
from __future__ import annotations

import os
import subprocess

import pytest

from controller import lifecycle, pagination
from controller.errors import RequestError
from corral import scheduling, status
from corral.selectors import SelectorError, matches, parse_selector
from corral.v1 import node_pb2, vm_pb2
from corral.validation import ValidationError, validate_new_vm


def make_vm(name="web-1", vcpus=1, memory=128, **selector) -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = name
    vm.spec.vcpus = vcpus
    vm.spec.memory_mib = memory
    vm.spec.boot.kernel.kernel_path = "/boot/vmlinuz"
    vm.spec.node_selector.update(selector)
    return vm


@pytest.mark.parametrize("name", ["", "Web", "web_1", "-web", "web-", "a" * 64, "we b", "../etc", "a.b"])
def test_bad_names_are_refused(name):
    with pytest.raises(ValidationError, match="metadata.name"):
        validate_new_vm(make_vm(name=name))


@pytest.mark.parametrize("name", ["a", "web-1", "a" * 63, "0day"])
def test_good_names_pass(name):
    validate_new_vm(make_vm(name=name))


@pytest.mark.parametrize("vcpus,memory,field", [(0, 128, "vcpus"), (257, 128, "vcpus"), (1, 8, "memory"),
                                                 (1, 10**9, "memory"), (-1, 128, "vcpus")])
def test_bad_sizes_are_refused(vcpus, memory, field):
    with pytest.raises(ValidationError, match=field):
        validate_new_vm(make_vm(vcpus=vcpus, memory=memory))


@pytest.mark.parametrize("path", ["vmlinuz", "/boot/../etc/shadow", "/boot//vmlinuz", "/boot/\nx", "/a/./b"])
def test_kernel_paths_must_be_absolute_and_normalised(path):
    vm = make_vm()
    vm.spec.boot.kernel.kernel_path = path
    with pytest.raises(ValidationError, match="kernel_path"):
        validate_new_vm(vm)


def test_disk_boot_needs_an_explicit_format():
    vm = make_vm()
    vm.spec.boot.disk.image_path = "/var/lib/images/a.qcow2"
    with pytest.raises(ValidationError, match="format"):
        validate_new_vm(vm)
    vm.spec.boot.disk.format = vm_pb2.DISK_FORMAT_QCOW2
    validate_new_vm(vm)


def test_missing_boot_and_every_problem_listed():
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = "BAD"
    vm.spec.vcpus = 0
    with pytest.raises(ValidationError) as caught:
        validate_new_vm(vm)
    assert len(caught.value.problems) == 4  # name, vcpus, memory, boot


def test_labels_are_checked():
    vm = make_vm()
    vm.metadata.labels["bad key!"] = "x"
    vm.metadata.labels["ok"] = "<script>"
    with pytest.raises(ValidationError) as caught:
        validate_new_vm(vm)
    assert len(caught.value.problems) == 2


def test_selectors():
    selector = parse_selector("app=web, tier!=db,gpu,!spot")
    assert matches(selector, {"app": "web", "gpu": "1"})
    assert not matches(selector, {"app": "web", "gpu": "1", "spot": ""})
    assert not matches(selector, {"app": "web", "tier": "db", "gpu": "1"})
    assert not matches(selector, {"app": "api", "gpu": "1"})
    assert matches(parse_selector(""), {})
    with pytest.raises(SelectorError):
        parse_selector("a=<b>")


def node(name, vcpus=4, memory=4096, **labels) -> node_pb2.Node:
    made = node_pb2.Node()
    made.metadata.name = name
    made.metadata.labels.update(labels)
    made.status.capacity.vcpus = vcpus
    made.status.capacity.memory_mib = memory
    return made


def placed(vm: vm_pb2.VirtualMachine, on: str) -> vm_pb2.VirtualMachine:
    vm.status.node_name = on
    vm.status.phase = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
    return vm


def test_fit_counts_what_assigned_vms_take():
    views = scheduling.build_views([node("n1", vcpus=2, memory=1024)], {"n1"},
                                   [placed(make_vm("a", vcpus=1, memory=768), "n1")])
    assert scheduling.choose_node(make_vm(vcpus=1, memory=256).spec, views) == ("n1", "")
    chosen, why = scheduling.choose_node(make_vm(vcpus=1, memory=512).spec, views)
    assert chosen is None and why == "0/1 nodes are available: 1 Insufficient memory."


def test_cpu_allocation_ratio_overcommits_vcpus_but_never_memory():
    from handler.node import node_record
    two_cores = node_record(name="n1", labels={}, vcpus=2, memory_mib=2048, hypervisor="qemu",
                            cpu_allocation_ratio=10)
    assert (two_cores.status.allocatable.vcpus, two_cores.status.allocatable.memory_mib) == (20, 2048)
    running = [placed(make_vm(f"v{i}", vcpus=1, memory=64), "n1") for i in range(19)]
    views = scheduling.build_views([two_cores], {"n1"}, running)
    assert scheduling.choose_node(make_vm(vcpus=1, memory=64).spec, views) == ("n1", "")  # the 20th
    views = scheduling.build_views([two_cores], {"n1"}, running + [placed(make_vm("v19", vcpus=1, memory=64), "n1")])
    assert scheduling.choose_node(make_vm(vcpus=1, memory=64).spec, views)[1] == \
        "0/1 nodes are available: 1 Insufficient vcpus."
    views = scheduling.build_views([two_cores], {"n1"}, [])
    assert scheduling.choose_node(make_vm(vcpus=1, memory=2049).spec, views)[1] == \
        "0/1 nodes are available: 1 Insufficient memory."
    strict = node_record(name="n1", labels={}, vcpus=2, memory_mib=2048, hypervisor="qemu")
    views = scheduling.build_views([strict], {"n1"}, running[:2])
    assert scheduling.choose_node(make_vm(vcpus=1, memory=64).spec, views)[0] is None  # ratio 1: 2 vCPUs


def test_finished_vms_free_their_resources():
    done = placed(make_vm("a", vcpus=2), "n1")
    done.status.phase = vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED
    views = scheduling.build_views([node("n1", vcpus=2)], {"n1"}, [done])
    assert scheduling.choose_node(make_vm(vcpus=2).spec, views)[0] == "n1"


def test_not_ready_cordoned_and_selector_are_explained():
    cordoned = node("n2")
    cordoned.spec.unschedulable = True
    views = scheduling.build_views([node("n1"), cordoned, node("n3", disk="hdd")], {"n2", "n3"}, [])
    chosen, why = scheduling.choose_node(make_vm(disk="ssd").spec, views)
    assert chosen is None
    assert why == ("0/3 nodes are available: 1 node(s) didn't match the node selector, "
                   "1 node(s) were not ready, 1 node(s) were unschedulable.")


def test_ties_spread_across_nodes():
    views = scheduling.build_views([node("n1"), node("n2")], {"n1", "n2"}, [])
    chosen = []
    for index in range(4):
        vm = make_vm(f"v{index}")
        name, _ = scheduling.choose_node(vm.spec, views)
        views[name].add(vm.spec)
        chosen.append(name)
    assert sorted(chosen) == ["n1", "n1", "n2", "n2"]


def test_page_tokens_round_trip_and_reject_garbage():
    assert pagination.decode_token(pagination.encode_token(42, "web-7")) == (42, "web-7")
    for bad in ("garbage", "eyJ4IjoxfQ", pagination.encode_token(0, "a")):
        with pytest.raises(RequestError):
            pagination.decode_token(bad)
    assert pagination.page_size(0) == pagination.DEFAULT_PAGE_SIZE
    assert pagination.page_size(10**6) == pagination.MAX_PAGE_SIZE


def test_phase_transitions_and_conditions():
    vm = make_vm()
    assert status.set_phase(vm, vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING)
    assert not status.set_phase(vm, vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING)
    assert status.set_phase(vm, vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING)
    assert [t.phase for t in vm.status.phase_transitions] == [1, 3]
    assert status.set_condition(vm, "Ready", True, "Running")
    first = vm.status.conditions[0].last_transition_time.ToNanoseconds()
    assert not status.set_condition(vm, "Ready", True, "Running")
    assert status.set_condition(vm, "Ready", True, "Running", "still")
    assert vm.status.conditions[0].last_transition_time.ToNanoseconds() == first
    assert status.phase_name(vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED) == "Succeeded"


def ended(phase, strategy=0, lost=False) -> vm_pb2.VirtualMachine:
    vm = make_vm()
    vm.spec.run_strategy = strategy
    vm.status.phase = phase
    vm.status.node_name = "n1"
    vm.status.instance_uid = "i-1"
    if lost:
        lifecycle.mark_lost(vm, "n1")
    return vm


@pytest.mark.parametrize("strategy,phase,restarts", [
    (vm_pb2.RUN_STRATEGY_ALWAYS, vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED, True),
    (vm_pb2.RUN_STRATEGY_ALWAYS, vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED, True),
    (vm_pb2.RUN_STRATEGY_RERUN_ON_FAILURE, vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED, False),
    (vm_pb2.RUN_STRATEGY_RERUN_ON_FAILURE, vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED, True),
    (vm_pb2.RUN_STRATEGY_UNSPECIFIED, vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED, True),
    (vm_pb2.RUN_STRATEGY_ONCE, vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED, False),
    (vm_pb2.RUN_STRATEGY_MANUAL, vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED, False),
    (vm_pb2.RUN_STRATEGY_HALTED, vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED, False),
])
def test_run_strategies_decide_restarts(strategy, phase, restarts):
    assert lifecycle.wants_restart(ended(phase, strategy)) is restarts


def test_restart_backs_off_after_crashes_but_not_after_a_lost_node():
    crashed = ended(vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED)
    delay = lifecycle.restart(crashed, now_seconds=1000.0)
    assert 10 <= delay <= 11 and crashed.status.restart_count == 1
    assert crashed.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING
    assert not crashed.status.node_name and not crashed.status.instance_uid
    assert lifecycle.waiting_for_backoff(crashed, 1005.0) and not lifecycle.waiting_for_backoff(crashed, 1012.0)
    lost = ended(vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING, lost=True)
    assert lost.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED
    assert lifecycle.restart(lost, now_seconds=1000.0) == 0.0
    assert lifecycle.backoff_seconds(0) == 0
    assert 40 <= lifecycle.backoff_seconds(2) <= 44 and 90 <= lifecycle.backoff_seconds(3) <= 99
    assert lifecycle.backoff_seconds(6) == lifecycle.backoff_seconds(100) == 300


def test_handler_refuses_assignments_from_a_deposed_leader(tmp_path):
    from handler.agent import NodeAgent
    agent = NodeAgent(node_name="n1", state_dir=tmp_path, launcher_command=["true"], stubs=None,
                      grace_seconds=1, locks=None, deadline=None)
    current = placed(make_vm("pet"), "n1")
    current.status.instance_uid, current.status.assignment_token = "run-2", 7
    agent.upsert(current)
    late = placed(make_vm("pet"), "n1")
    late.status.instance_uid, late.status.assignment_token = "run-1", 5  # sent by an older leader
    agent.upsert(late)
    assert agent.desired["pet"].status.instance_uid == "run-2"
    agent.set_assignments({"pet": late})
    assert agent.desired["pet"].status.instance_uid == "run-2"


def test_stale_console_locks_are_removed_and_live_ones_kept(tmp_path):
    from handler.isolation import remove_stale_console_locks
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "LCK.._pts_3").write_text(f"{dead.pid:>10}\n")
    (tmp_path / "LCK.._pts_4").write_text(f"{os.getpid():>10}\n")
    (tmp_path / "LCK.._pts_5").write_text("garbage\n")
    (tmp_path / "other").write_text("1\n")
    assert remove_stale_console_locks(tmp_path) == [tmp_path / "LCK.._pts_3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LCK.._pts_4", "LCK.._pts_5", "other"]


def test_console_lock_cleanup_follows_no_symlink_and_never_blocks_on_a_fifo(tmp_path):
    """/var/lock is writable by every VM user: what they plant there must not steer root."""
    import threading

    from handler.isolation import remove_stale_console_locks
    dead = subprocess.Popen(["true"])
    dead.wait()
    target = tmp_path / "elsewhere"
    target.write_text(f"{dead.pid:>10}\n")  # looks like a stale lock, but is someone else's file
    locks = tmp_path / "lock"
    locks.mkdir()
    (locks / "LCK.._pts_7").symlink_to(target)
    os.mkfifo(locks / "LCK.._pts_8")  # reading it would block root forever
    done = []
    worker = threading.Thread(target=lambda: done.append(remove_stale_console_locks(locks)), daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert done == [[]], "the cleanup blocked on a FIFO or removed a planted entry"
    assert (locks / "LCK.._pts_7").is_symlink() and target.exists()


def test_a_guest_agent_flood_is_capped_and_its_escape_sequences_removed():
    from controller.handler_api import apply_run_report
    from corral.v1 import handler_pb2
    vm = make_vm("pet")
    vm.status.phase = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
    flood = vm_pb2.GuestInfo(agent_connected=True, hostname="\x1b]0;pwned\x07\x1b[2J" + "h" * 100_000,
                             os_name="Debian\x1b[31m")
    for index in range(5000):
        flood.interfaces.add(name=f"eth{index}\x1b[1m", ip_addresses=[f"10.0.{index % 250}.1/24"] * 500)
    report = handler_pb2.ReportVirtualMachineStatusRequest(phase=vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING, guest=flood)
    apply_run_report(vm, report, new_phase=False, reason="Running")
    guest = vm.status.guest
    assert guest.agent_connected and len(guest.interfaces) == 16
    assert all(len(i.ip_addresses) == 16 for i in guest.interfaces)
    assert len(guest.hostname) <= 131 and guest.os_name == "Debian?[31m"
    texts = [guest.hostname, guest.os_name] + [i.name for i in guest.interfaces]
    assert not any("\x1b" in text or "\x07" in text for text in texts)
    assert vm.ByteSize() < 64 * 1024, "the guest grew its VM's record"


def test_a_start_error_without_qemu_s_reason_gets_it_from_qemu_s_log(tmp_path):
    """libvirt can lose the race with a QEMU that exits at once and say only that the monitor
    socket refused: the launcher adds QEMU's own last words from its log (once)."""
    from launcher.qemu_log import with_qemu_log

    log = tmp_path / "vm.log"
    log.write_text("-msg timestamp=on\nchar device redirected to /dev/pts/0 (label charserial0)\n"
                   "qemu: could not open kernel file '/nonexistent/vmlinuz': No such file or directory\n"
                   "2026-11-30 19:34:11.562+0000: shutting down, reason=failed\n")
    lost = "internal error: failed to connect to monitor socket: Connection refused"
    said = with_qemu_log(lost, [str(tmp_path / "absent.log"), str(log)])
    assert said.startswith(lost) and "could not open kernel file '/nonexistent/vmlinuz'" in said
    complete = "internal error: qemu: could not open kernel file '/nonexistent/vmlinuz': No such file or directory"
    assert with_qemu_log(complete, [str(log)]) == complete
    assert with_qemu_log(lost, [str(tmp_path / "absent.log")]) == lost
