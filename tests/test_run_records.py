"""Root keeps its own record of each run (handler/launchers.py): attacks by a VM's user on its
own directory (which it owns, with per-VM isolation) do not reach root.

- a symlink planted at vm.binpb.tmp is not followed when root writes the launcher's copy;
- a forged vm.binpb (naming another VM and uid) is not what the handler adopts after a restart.
"""
from __future__ import annotations

import os
import uuid

from corral.v1 import vm_pb2
from handler.launchers import VM_FILE, Launcher, vm_dir_for
from handler.vm_files import run_record_path

VM_UID = 200999  # what a VM's user would be


def make_vm(name: str) -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = name
    vm.metadata.uid = str(uuid.uuid4())
    vm.status.instance_uid = str(uuid.uuid4())
    vm.spec.vcpus = 1
    return vm


def test_a_planted_symlink_is_not_followed_when_root_writes_the_vm_file(root_state_dir, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    vm = make_vm("pet")
    vm_dir = vm_dir_for(root_state_dir, vm.status.instance_uid)
    vm_dir.mkdir(parents=True)
    os.chown(vm_dir, VM_UID, VM_UID)  # the VM's user owns its directory (a run set up again)
    (vm_dir / f"{VM_FILE}.tmp").symlink_to(victim)
    (vm_dir / VM_FILE).symlink_to(victim)
    Launcher.create_dir(state_dir=root_state_dir, vm=vm)
    assert victim.read_text() == "root's file\n", "root wrote through the VM user's symlink"
    written = vm_pb2.VirtualMachine()
    written.ParseFromString((vm_dir / VM_FILE).read_bytes())
    assert not (vm_dir / VM_FILE).is_symlink() and written == vm


def test_a_forged_vm_file_is_not_what_the_handler_adopts(root_state_dir):
    vm, other = make_vm("pet"), make_vm("neighbour")
    vm_dir = Launcher.create_dir(state_dir=root_state_dir, vm=vm)
    (vm_dir / VM_FILE).write_bytes(other.SerializeToString())  # the VM's user rewrites its copy
    adopted = Launcher(vm_dir=vm_dir, on_change=lambda: None)
    try:
        assert adopted.vm == vm and adopted.uid == vm.status.instance_uid
        assert run_record_path(vm_dir).stat().st_uid == 0
        assert run_record_path(vm_dir).parent.stat().st_mode & 0o777 == 0o700
    finally:
        adopted.close()


def test_a_run_from_before_the_records_is_recorded_once(root_state_dir):
    vm = make_vm("legacy")
    vm_dir = Launcher.create_dir(state_dir=root_state_dir, vm=vm)
    run_record_path(vm_dir).unlink()  # as an older handler left it
    adopted = Launcher(vm_dir=vm_dir, on_change=lambda: None)
    try:
        assert adopted.vm == vm and run_record_path(vm_dir).exists()
    finally:
        adopted.close()


def test_a_finished_marker_planted_by_the_vms_user_is_not_believed(root_state_dir):
    """The run's end is root's record (STATE_DIR/runs/NAME.finished). A VM's user marking its
    own running guest finished in its directory would make root stop re-binding its instance
    lock and leave it running when the node reclaims its guests."""
    vm = make_vm("pet")
    vm_dir = Launcher.create_dir(state_dir=root_state_dir, vm=vm)
    os.chown(vm_dir, VM_UID, VM_UID)
    planted = vm_dir / "finished"
    planted.write_text("")
    os.chown(planted, VM_UID, VM_UID)
    launcher = Launcher(vm_dir=vm_dir, on_change=lambda: None)
    try:
        assert not launcher.finished
        planted.unlink()
        planted.symlink_to(run_record_path(vm_dir))  # a link to a root-owned file: not a marker either
        assert not launcher.finished
        launcher.mark_finished()  # root's own mark
        assert launcher.finished and launcher.finished_record.stat().st_uid == 0
        assert launcher.finished_record.parent == run_record_path(vm_dir).parent
    finally:
        launcher.close()
    launcher.remove_dir()
    assert not launcher.finished_record.exists()
