"""Guests cannot steer root (issue 10 part 3): attacks by a VM's user, or by a VM spec, on what
the handler (root) opens, chowns or hands out. Each test performs the attack with real files,
real uids and the handler's own code, and checks it is refused with nothing changed.

- a uid is not handed to a new VM while a disk or save folder of an ended run still belongs to it;
- kernel, initrd and boot disk paths must resolve inside the node's roots, and the launcher's
  copy of the VM names the resolved path;
- a save file a run replaced with a symlink (to another VM's saved memory) is not handed over.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from corral.v1 import vm_pb2
from handler import saved_files
from handler.devices import DeviceError, Roots, RunDevices, node_paths
from handler.isolation import UID_COUNT, Cgroups, Isolation, Layout
from handler.launchers import Launcher
from handler.uids import UIDS_DIR, UidLedger

BASE = 230000  # a uid range no other test uses
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="ownership is what these attacks are about")


def make_vm(name: str = "pet") -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = name
    vm.metadata.uid = str(uuid.uuid4())
    vm.status.instance_uid = str(uuid.uuid4())
    vm.spec.vcpus, vm.spec.memory_mib = 1, 128
    return vm


def isolation_for(state_dir: Path) -> Isolation:
    return Isolation(uid_base=BASE, memory_overhead_mib=0, cgroups=Cgroups(Layout()),
                     ledger=UidLedger(state_dir / UIDS_DIR, uid_range=range(BASE, BASE + UID_COUNT)))


# -- uids are not reused while something still belongs to them ---------------------------------
@needs_root
def test_a_uid_is_not_reused_while_a_persistent_disk_still_belongs_to_it(root_state_dir, tmp_path):
    disks = tmp_path / "disks"
    disks.mkdir()
    disk = disks / "data.img"
    disk.write_bytes(b"\0" * 4096)
    os.chown(disk, 1234, 1234)  # the operator's owner, given back at the end
    os.chmod(disk, 0o640)
    isolation = isolation_for(root_state_dir)
    first = make_vm("first")
    first.spec.disks.add(name="data", persistent=vm_pb2.PersistentDisk(path=str(disk), format=vm_pb2.DISK_FORMAT_RAW))
    first_dir = Launcher.create_dir(state_dir=root_state_dir, vm=first, isolation=isolation)
    owner = (first_dir.stat().st_uid, first_dir.stat().st_gid)
    RunDevices(roots=Roots(images=(), disks=(str(disks),)), run_dir=first_dir, scratch_parent=root_state_dir,
               owner=owner, hand_over=lambda fd, path, mode: isolation.hand_over(fd, path, owner, mode)).prepare(first)
    assert disk.stat().st_uid == owner[0]

    # The first run's directory goes (as it would were a handler to lose track of the run,
    # or remove it without giving back): the disk still belongs to its uid.
    import shutil
    shutil.rmtree(first_dir)
    second_dir = Launcher.create_dir(state_dir=root_state_dir, vm=make_vm("second"), isolation=isolation)
    assert second_dir.stat().st_uid != owner[0], "a new VM got the uid that still owns the first VM's disk"

    # The proper end of the run gives the disk back (owner and mode as they were), then frees the uid.
    assert isolation.release(owner[0])
    assert (disk.stat().st_uid, disk.stat().st_gid, disk.stat().st_mode & 0o777) == (1234, 1234, 0o640)
    third_dir = Launcher.create_dir(state_dir=root_state_dir, vm=make_vm("third"), isolation=isolation)
    assert third_dir.stat().st_uid == owner[0]


@needs_root
def test_giving_back_follows_no_link_a_run_planted(root_state_dir, tmp_path):
    """A save folder handed to a run: its user fills it with a symlink to /etc-like files and a
    file of its own; root takes the folder back without touching the link's target."""
    victim = tmp_path / "victim"
    victim.write_text("root's\n")
    isolation = isolation_for(root_state_dir)
    vm = make_vm()
    vm_dir = Launcher.create_dir(state_dir=root_state_dir, vm=vm, isolation=isolation)
    owner = (vm_dir.stat().st_uid, vm_dir.stat().st_gid)
    save_dir = tmp_path / "saved"
    folder = saved_files.prepare_save_folder(save_dir, vm.metadata.uid,
                                             lambda fd, path, mode: isolation.hand_over(fd, path, owner, mode))
    assert folder.stat().st_uid == owner[0]
    (folder / "run.save").write_bytes(b"memory")
    os.chown(folder / "run.save", *owner)
    os.symlink(victim, folder / "link.save")
    os.lchown(folder / "link.save", *owner)
    isolation.give_back_path(owner[0], str(folder))
    assert folder.stat().st_uid == 0 and (folder / "run.save").stat().st_uid == 0
    assert (folder / "run.save").stat().st_mode & 0o077 == 0
    assert os.lstat(folder / "link.save").st_uid == 0 and victim.stat().st_uid == 0
    assert victim.stat().st_mode & 0o777 == 0o644


# -- boot files inside the roots ------------------------------------------------------------------
@pytest.fixture
def roots(tmp_path: Path) -> tuple[Roots, Path]:
    images, disks, elsewhere = tmp_path / "images", tmp_path / "disks", tmp_path / "elsewhere"
    for path in (images, disks, elsewhere):
        path.mkdir()
    (images / "vmlinuz-1").write_bytes(b"kernel")
    os.symlink("vmlinuz-1", images / "vmlinuz")
    (elsewhere / "secret").write_bytes(b"secret")
    os.symlink(elsewhere / "secret", images / "escape")
    return Roots(images=(str(images),), disks=(str(disks),)), tmp_path


@pytest.mark.parametrize("field, path", [
    ("kernel_path", "/etc/shadow"),
    ("kernel_path", "images/escape"),  # a symlink inside the roots that leads out of them
    ("initrd_path", "elsewhere/secret"),
])
def test_boot_files_outside_the_image_roots_are_refused(roots, tmp_path, field, path):
    node_roots, base = roots
    vm = make_vm()
    vm.spec.boot.kernel.kernel_path = str(base / "images" / "vmlinuz")
    setattr(vm.spec.boot.kernel, field, path if path.startswith("/") else str(base / path))
    with pytest.raises(DeviceError, match="outside this node's allowed directories"):
        RunDevices(roots=node_roots, run_dir=tmp_path, scratch_parent=tmp_path, owner=None).prepare(vm)
    refused = getattr(vm.spec.boot.kernel, field)
    assert getattr(node_paths(vm, node_roots).spec.boot.kernel, field) == refused  # not resolved out


def test_the_launchers_copy_names_the_resolved_boot_files(roots):
    node_roots, base = roots
    vm = make_vm()
    vm.spec.boot.kernel.kernel_path = str(base / "images" / "vmlinuz")
    resolved = node_paths(vm, node_roots)
    assert resolved.spec.boot.kernel.kernel_path == str(base / "images" / "vmlinuz-1")
    assert vm.spec.boot.kernel.kernel_path == str(base / "images" / "vmlinuz")  # the original is kept


def test_a_boot_disk_must_be_inside_the_disk_roots(roots, tmp_path):
    node_roots, base = roots
    vm = make_vm()
    vm.spec.boot.disk.image_path = str(base / "images" / "vmlinuz-1")  # an image root is not writable storage
    vm.spec.boot.disk.format = vm_pb2.DISK_FORMAT_RAW
    with pytest.raises(DeviceError, match="boot disk .* outside"):
        RunDevices(roots=node_roots, run_dir=tmp_path, scratch_parent=tmp_path, owner=None).prepare(vm)


# -- restoring a save file a run replaced --------------------------------------------------------
@needs_root
def test_a_planted_save_link_to_another_vms_memory_is_not_handed_over(tmp_path):
    save_dir = tmp_path / "saved"
    attacker, victim = str(uuid.uuid4()), str(uuid.uuid4())
    (save_dir / victim).mkdir(parents=True, mode=0o700)
    secret = save_dir / victim / "run.save"
    secret.write_bytes(b"the other guest's memory")
    os.chmod(secret, 0o600)
    (save_dir / attacker).mkdir(mode=0o700)
    # The attacker's launcher, asked to save, left a link instead of its memory.
    planted = save_dir / attacker / "mine.save"
    os.symlink(secret, planted)
    handed: list[str] = []
    with pytest.raises(OSError):
        saved_files.prepare_restore(save_dir, attacker, planted, lambda fd, path, mode: handed.append(path))
    assert handed == [] and secret.stat().st_uid == 0 and (save_dir / victim).stat().st_uid == 0
    # Another VM's folder named outright is refused too.
    with pytest.raises(OSError, match="not this VM's file"):
        saved_files.prepare_restore(save_dir, attacker, secret, lambda fd, path, mode: handed.append(path))
    # A hard link to it (were the link allowed) is refused: one link only.
    os.link(secret, save_dir / attacker / "hard.save")
    with pytest.raises(OSError, match="single link"):
        saved_files.prepare_restore(save_dir, attacker, save_dir / attacker / "hard.save",
                                    lambda fd, path, mode: handed.append(path))
    assert handed == []


# -- end to end: a real handler ------------------------------------------------------------------
def ready_condition(vm: vm_pb2.VirtualMachine) -> vm_pb2.Condition:
    found = [c for c in vm.status.conditions if c.type == "Ready"]
    assert found, vm.status.conditions
    return found[0]


@needs_root
def test_handler_refuses_boot_files_outside_its_roots_and_gives_disks_back(cluster):
    """Kernel /etc/shadow: the run fails at once (DiskUnavailable, naming the path), no launcher
    starts, so nothing opens the file. A persistent disk handed to a run goes back to its owner
    when the VM is deleted, before its uid is free."""
    from tests.cluster import wait_for
    disks = cluster.node_root / "disks"
    disks.mkdir()
    disk = disks / "data.img"
    disk.write_bytes(b"\0" * 65536)
    os.chown(disk, 1234, 1234)
    os.chmod(disk, 0o640)
    cluster.start_controller()
    cluster.start_handler("n1", extra=["--isolation", "on", "--disk-roots", str(disks)])

    shadow = cluster.guest_vm("shadow")
    shadow.spec.boot.kernel.kernel_path = "/etc/shadow"
    shadow.spec.run_strategy = vm_pb2.RUN_STRATEGY_ONCE
    cluster.create(shadow)
    failed = cluster.wait_phase("shadow", vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED, timeout=30)
    condition = ready_condition(failed)
    assert condition.reason == "DiskUnavailable" and "/etc/shadow" in condition.message
    assert "outside this node's allowed directories" in condition.message
    from handler.launchers import vm_dir_for
    shadow_dir = vm_dir_for(cluster.state_dir("n1"), failed.status.instance_uid)
    assert not (shadow_dir / "launcher.log").exists(), "a launcher started for a refused kernel"

    vm = cluster.guest_vm("disky")
    vm.spec.disks.add(name="data", persistent=vm_pb2.PersistentDisk(path=str(disk), format=vm_pb2.DISK_FORMAT_RAW))
    cluster.create(vm)
    running = cluster.wait_phase("disky", vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING, timeout=60)
    run_dir = vm_dir_for(cluster.state_dir("n1"), running.status.instance_uid)
    uid = run_dir.stat().st_uid
    assert disk.stat().st_uid == uid
    ledger = cluster.state_dir("n1") / UIDS_DIR / f"{uid}.json"
    assert ledger.exists() and str(disk) in ledger.read_text()
    from corral.v1 import vm_pb2 as pb
    cluster.vms.DeleteVirtualMachine(pb.DeleteVirtualMachineRequest(name="disky"), timeout=10)
    wait_for(lambda: not ledger.exists(), timeout=60, what="the run's uid to be released")
    st = disk.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1234, 1234, 0o640)


# -- bridge networks: a tap sends only with its own MAC -------------------------------------------
def _ns(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True, check=check, timeout=60)


@needs_root
def test_a_tap_cannot_send_with_another_mac():
    """Real frames through a real bridge, filtered by the handler's nftables table (in a
    network namespace of the test's own): a 'guest' behind a ct* port reaches its neighbour
    with its own MAC, not once it takes another one (the neighbour's gateway's, say)."""
    tag = uuid.uuid4().hex[:6]
    hub, guest, peer = f"cgh{tag}", f"cgg{tag}", f"cgp{tag}"
    tap = f"ct{tag}spf00"  # a Corral tap's name: filtered
    for ns in (hub, guest, peer):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        _ns(hub, "ip", "link", "add", "br0", "type", "bridge")
        _ns(hub, "ip", "link", "set", "br0", "up")
        for port, ns, address in ((tap, guest, "10.99.0.1/24"), ("p0", peer, "10.99.0.2/24")):
            _ns(hub, "ip", "link", "add", port, "type", "veth", "peer", "name", "e0")
            _ns(hub, "ip", "link", "set", "e0", "netns", ns)
            _ns(hub, "ip", "link", "set", port, "master", "br0")
            _ns(hub, "ip", "link", "set", port, "up")
            _ns(ns, "ip", "addr", "add", address, "dev", "e0")
            _ns(ns, "ip", "link", "set", "e0", "up")
        mac = _ns(guest, "cat", "/sys/class/net/e0/address").stdout.strip()
        allow = f"from handler import mac_filter; mac_filter.allow({tap!r}, {mac!r})"
        _ns(hub, sys.executable, "-c", allow)

        def reaches() -> bool:
            """A TCP connect to a closed port: refused (RST) means the frames got through."""
            _ns(guest, "ip", "neigh", "flush", "dev", "e0", check=False)
            _ns(peer, "ip", "neigh", "flush", "dev", "e0", check=False)
            probe = ("import socket, sys\ntry: socket.create_connection(('10.99.0.2', 9), timeout=2)\n"
                     "except ConnectionRefusedError: sys.exit(0)\nexcept OSError: sys.exit(1)\n")
            return _ns(guest, sys.executable, "-c", probe, check=False).returncode == 0

        assert reaches(), "the guest's own MAC is let through"
        _ns(guest, "ip", "link", "set", "e0", "address", "02:66:66:66:66:66")
        assert not reaches(), "a spoofed source MAC went through the bridge"
        _ns(guest, "ip", "link", "set", "e0", "address", mac)
        assert reaches()
        # The filter is what stopped it: without the table the spoofed MAC gets through.
        _ns(guest, "ip", "link", "set", "e0", "address", "02:66:66:66:66:66")
        _ns(hub, "nft", "delete", "table", "bridge", "corral")
        assert reaches()
    finally:
        for ns in (hub, guest, peer):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def test_bridge_and_mac_checks():
    from handler.networks import bridge_allowed, network_problem
    assert not bridge_allowed("br0", ())  # nothing by default
    assert bridge_allowed("br-vm3", ("br-vm*",)) and not bridge_allowed("br-mgmt", ("br-vm*",))
    assert "not allowed on this node" in network_problem("br-mgmt", "02:00:00:00:00:01", allowed=("br-vm*",), taken={})
    assert "not allowed" in network_problem("lo", "02:00:00:00:00:01", allowed=(), taken={})
    # lo is no bridge; a taken MAC is refused once the bridge is fine (checked with the real lo below).
    assert "is not a bridge" in network_problem("lo", "02:00:00:00:00:01", allowed=("lo",), taken={})


# -- without isolation, libvirt changes no file's owner -------------------------------------------
def test_embed_qemu_conf_turns_dynamic_ownership_off():
    from launcher.host import embed_qemu_conf
    for as_root in (False, True):
        assert "dynamic_ownership = 0" in embed_qemu_conf(as_root=as_root).splitlines()
    assert 'user = "root"' in embed_qemu_conf(as_root=True) and "user" not in embed_qemu_conf(as_root=False)


@needs_root
def test_without_isolation_no_file_a_vm_names_changes_owner(cluster):
    """Isolation off: the launcher is root and libvirt's dynamic ownership used to chown the
    kernel, initrd and disks a VM names (to libvirt-qemu while it ran, root:root after). Now a
    VM booting a kernel and a persistent disk owned by uid 1234 leaves both as they were."""
    from tests.cluster import wait_for
    images, disks = cluster.node_root / "images", cluster.node_root / "disks"
    images.mkdir()
    disks.mkdir()
    for name in ("vmlinuz", "initrd.gz"):
        (images / name).write_bytes((cluster.guest_dir / name).read_bytes())
        os.chown(images / name, 1234, 1234)
        os.chmod(images / name, 0o644)
    disk = disks / "data.img"
    disk.write_bytes(b"\0" * 65536)
    os.chown(disk, 1234, 1234)
    os.chmod(disk, 0o640)
    watched = [images / "vmlinuz", images / "initrd.gz", disk]
    before = {path: (path.stat().st_uid, path.stat().st_gid, path.stat().st_mode) for path in watched}
    cluster.start_controller()
    cluster.start_handler("n1", extra=["--isolation", "off", "--image-roots", str(images), "--disk-roots", str(disks)])
    vm = cluster.guest_vm("plain")
    vm.spec.boot.kernel.kernel_path = str(images / "vmlinuz")
    vm.spec.boot.kernel.initrd_path = str(images / "initrd.gz")
    vm.spec.disks.add(name="data", persistent=vm_pb2.PersistentDisk(path=str(disk), format=vm_pb2.DISK_FORMAT_RAW))
    cluster.create(vm)
    running = cluster.wait_phase("plain", vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING, timeout=60)
    wait_for(lambda: b"CORRAL-GUEST-READY" in Path(running.status.serial_log_path).read_bytes(),
             timeout=60, what="the guest to boot")
    assert {path: (path.stat().st_uid, path.stat().st_gid, path.stat().st_mode) for path in watched} == before
    cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="plain"), timeout=10)
    wait_for(lambda: not Path(running.status.serial_log_path).exists(), timeout=60, what="the run to be removed")
    assert {path: (path.stat().st_uid, path.stat().st_gid, path.stat().st_mode) for path in watched} == before


@needs_root
def test_a_uid_that_left_a_file_in_tmp_is_not_reused(root_state_dir):
    isolation = isolation_for(root_state_dir)
    first_dir = Launcher.create_dir(state_dir=root_state_dir, vm=make_vm("first"), isolation=isolation)
    uid = first_dir.stat().st_uid
    left = Path("/dev/shm") / f"corral-test-{uuid.uuid4().hex[:8]}"
    left.write_text("the first VM's")
    os.chown(left, uid, uid)
    try:
        import shutil
        shutil.rmtree(first_dir)
        assert isolation.release(uid)
        second_dir = Launcher.create_dir(state_dir=root_state_dir, vm=make_vm("second"), isolation=isolation)
        assert second_dir.stat().st_uid != uid
    finally:
        left.unlink()


@needs_root
def test_a_disk_handed_on_to_the_next_run_goes_back_to_its_first_owner(root_state_dir, tmp_path):
    """A VM's next run takes its persistent disk before the last run is removed: the disk ends
    with its operator's owner, not root's, and neither uid is freed while it holds the disk."""
    disk = tmp_path / "data.img"
    disk.write_bytes(b"\0" * 4096)
    os.chown(disk, 1234, 1234)
    os.chmod(disk, 0o640)
    isolation = isolation_for(root_state_dir)
    owners = []
    for name in ("run1", "run2"):
        vm_dir = Launcher.create_dir(state_dir=root_state_dir, vm=make_vm(name), isolation=isolation)
        owner = (vm_dir.stat().st_uid, vm_dir.stat().st_gid)
        fd = os.open(disk, os.O_RDONLY)
        try:
            isolation.hand_over(fd, str(disk), owner, 0o600)
        finally:
            os.close(fd)
        owners.append(owner[0])
    assert owners[0] != owners[1] and disk.stat().st_uid == owners[1]
    assert isolation.release(owners[0]) and disk.stat().st_uid == owners[1]  # run 2's still
    assert isolation.release(owners[1])
    assert (disk.stat().st_uid, disk.stat().st_gid, disk.stat().st_mode & 0o777) == (1234, 1234, 0o640)


def test_markers_a_vm_plants_in_its_directory_do_not_steer_root(tmp_path):
    """'incoming', 'arrived', 'migrating' and 'finished' are root's marks of a run, kept in its
    own records directory: the same names planted in the VM-owned directory change nothing."""
    from handler.launchers import Launcher
    from handler.migration_source import SourceSide
    from handler.migration_target import TargetSide
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = "planted"
    vm.status.instance_uid = "0f0f0f0f-0000-0000-0000-000000000000"
    vm_dir = Launcher.create_dir(state_dir=tmp_path, vm=vm)
    for name in ("incoming", "migrating", "finished"):  # planted by the VM's user
        (vm_dir / name).write_text("planted")
        os.chown(vm_dir / name, 200123, 200123)
    launcher = Launcher(vm_dir=vm_dir, on_change=lambda: None)
    assert not TargetSide.is_incoming(launcher)
    assert launcher.cgroup_name == launcher.uid
    assert not launcher.finished
    assert not SourceSide.holds_back(SourceSide.__new__(SourceSide), None, launcher)
    # Root's own marks do count, and go with the run.
    launcher.mark("incoming")
    assert TargetSide.is_incoming(launcher) and launcher.cgroup_name.endswith("-in")
    launcher.mark("arrived")
    assert not TargetSide.is_incoming(launcher)
    launcher.remove_dir()
    assert not list((tmp_path / "runs").glob("*.*"))
