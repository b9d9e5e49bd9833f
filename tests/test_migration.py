"""Live migration end to end on real parts: two nodes as network namespaces on one machine
(joined to the host by a bridge: etcd and the controller listen on the host's end), each
handler under `ip netns exec` bound to its namespace's address, launchers in libvirt session
mode, real TCG guests of 128 MiB. A third node in the host namespace has too little memory
to take anything. One namespace setup and one cluster for the whole module; the guests are
reused from case to case where that is safe.

Cases: `corral migrate --wait` (the guest keeps running: its uptime goes on, same run,
downtime measured); a cancel mid-way; a target without room; the target's launcher killed
mid-way; the source node killed mid-way (the VM then runs exactly once); `corral drain`
(LiveMigrate moves, eviction strategy None stops) and `corral uncordon`."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from corral.client import Client
from corral.v1 import migration_pb2, vm_pb2
from tests.cluster import REPO, Cluster, pids_mentioning, wait_for
from tests.test_console import Console
from tests.test_faults import CopySampler
from tests.netnodes import TwoNodes, netns_pids

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
M = migration_pb2
FINAL = (M.MIGRATION_PHASE_SUCCEEDED, M.MIGRATION_PHASE_FAILED)


class Nodes:
    """The bridge, the two namespaces and the cluster on top."""

    def __init__(self, cluster: Cluster, client: Client, addresses: dict[str, str], netns: dict[str, str],
                 server: str) -> None:
        self.cluster, self.client, self.addresses, self.netns, self.server = cluster, client, addresses, netns, server

    def handler_extra(self, node: str) -> list[str]:
        address = self.addresses[node]
        return ["--insecure",  # plaintext on the namespaces' private bridge
                "--listen", f"{address}:0", "--migration-listen", f"{address}:0", "--libvirt-mode", "session",
                "--heartbeat-seconds", "6", "--isolation", "on"]

    def start_handler(self, node: str) -> None:
        self.cluster.start_handler(node, extra=self.handler_extra(node),
                                   wrapper=["ip", "netns", "exec", self.netns[node]])

    def other(self, node: str) -> str:
        return "nb" if node == "na" else "na"

    # -- helpers ------------------------------------------------------------------------------
    def create(self, name: str, **spec) -> vm_pb2.VirtualMachine:
        vm = self.cluster.guest_vm(name)
        for key, value in spec.items():
            setattr(vm.spec, key, value)
        self.cluster.create(vm)
        return self.cluster.wait_phase(name, RUNNING, timeout=90)

    def wait_migration(self, name: str, predicate, *, timeout: float = 120, what: str = "") -> M.Migration:
        def check():
            migration = self.client.get_migration(name)
            return migration if predicate(migration) else None
        return wait_for(check, timeout=timeout, interval=0.2, what=what or f"migration {name}")

    def wait_final(self, name: str, *, timeout: float = 180) -> M.Migration:
        return self.wait_migration(name, lambda m: m.status.phase in FINAL, timeout=timeout,
                                   what=f"migration {name} to end")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "corral.cli", "--server", self.server, *args],
                                cwd=REPO, capture_output=True, text=True, timeout=600,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def uptime(self, name: str) -> float:
        remove_stale_console_locks()
        console = Console(self.cluster.vms, name)
        try:
            match = console.run(b"cat /proc/uptime", rb"(\d+\.\d+) \d+\.\d+", timeout=60)
            return float(match.group(1))
        finally:
            console.close()


def qemu_pids(uid: str) -> list[int]:
    found = []
    for pid in pids_mentioning(uid):
        try:
            if "qemu" in os.path.basename(os.readlink(f"/proc/{pid}/exe")):
                found.append(pid)
        except OSError:
            continue
    return found


def run_of(cmdline: bytes) -> str | None:
    """The domain uuid of a QEMU command line: during a migration both ends of one run have it."""
    parts = cmdline.split(b"\0")
    return parts[parts.index(b"-uuid") + 1].decode() if b"-uuid" in parts else None


def RunSampler(name: str) -> CopySampler:
    """The QEMU processes of one VM, by run: the paused incoming QEMU of the same run is
    expected during a migration, two of one run after a failure is not."""
    return CopySampler(f"guest={name},", key=run_of)


def remove_stale_console_locks() -> None:
    """Session-mode libvirt locks a console's pty in /var/lock (LCK.._pts_N, holding its pid).
    A lock left by a dead process of another VM user cannot be removed by the next one
    (/var/lock is sticky), and that pty's console then fails: a launcher-side gap (see the
    report); the test clears dead locks as root."""
    for lock in Path("/var/lock").glob("LCK.._pts_*"):
        try:
            pid = int(lock.read_text().split()[0])
            if not Path(f"/proc/{pid}").exists():
                lock.unlink()
        except (OSError, ValueError, IndexError):
            continue


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, guest_dir):
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("needs root and iproute2 for network namespaces")
    if shutil.which("etcd") is None or shutil.which("libvirtd") is None:
        pytest.skip("needs etcd and libvirtd")
    # The bridge, the two namespaces, etcd and the controller: tests/netnodes.py (shared with
    # bench/bench_migrate.py), which also removes all of it.
    with TwoNodes(tmp_path_factory.mktemp("migration"), guest_dir) as net:
        made = Nodes(net.cluster, net.client, net.addresses, net.netns, net.server)
        for node in ("na", "nb"):
            made.start_handler(node)
        # A node with too little memory for any guest, in the host's namespace.
        net.cluster.start_handler("tiny", memory_mib=64,
                                  extra=["--insecure", "--listen", f"{net.host_ip}:0",
                                         "--migration-listen", f"{net.host_ip}:0"])
        yield made


@pytest.fixture(scope="module")
def pet(nodes):
    """One guest most cases move around. Its name is this run's own: QEMU processes are
    counted by name across the machine, and other modules (run in parallel) have a "pet" too."""
    vm = nodes.create(f"pet-{uuid.uuid4().hex[:6]}", eviction_strategy=vm_pb2.EVICTION_STRATEGY_LIVE_MIGRATE)
    return vm.metadata.name


def test_migrate_moves_a_running_guest_without_stopping_it(nodes, pet):
    before = nodes.cluster.get(pet)
    source, uid = before.status.node_name, before.status.instance_uid
    target = nodes.other(source)
    up_before = nodes.uptime(pet)
    started = time.monotonic()
    result = nodes.cli("migrate", pet, "--to", target, "--wait", "--timeout", "180")
    took = time.monotonic() - started
    assert "Succeeded" in result.stdout, result.stdout
    after = nodes.cluster.get(pet)
    assert after.status.node_name == target and after.status.instance_uid == uid
    assert after.status.phase == RUNNING and not after.status.migration_target.migration_name
    migration = nodes.client.list_migrations(vm_name=pet)[-1]
    assert migration.status.phase == M.MIGRATION_PHASE_SUCCEEDED
    assert (migration.status.source_node, migration.status.target_node) == (source, target)
    # Only the target knows the downtime: when the source's report switched the VM first,
    # the target adds it a moment later.
    migration = nodes.wait_migration(migration.metadata.name, lambda m: m.status.downtime_ms > 0, timeout=10,
                                     what="the downtime")
    seen = [t.phase for t in migration.status.phase_transitions]
    for phase in (M.MIGRATION_PHASE_PREPARING_TARGET, M.MIGRATION_PHASE_TARGET_READY, M.MIGRATION_PHASE_SUCCEEDED):
        assert phase in seen, seen
    up_after = nodes.uptime(pet)
    assert up_after > up_before, (up_before, up_after)  # the same guest: no reboot
    wait_for(lambda: len(qemu_pids(uid)) == 1, timeout=20, what="exactly one QEMU of the run")
    # The source's run directory is gone; the run's lock is the target's.
    wait_for(lambda: not (nodes.cluster.state_dir(source) / "vms" / uid.replace("-", "")[:12]).exists(),
             timeout=30, what="the source's run directory to go")
    print(f"migration {source} -> {target}: {took:.1f}s (CLI), downtime {migration.status.downtime_ms} ms, "
          f"uptime {up_before:.1f}s -> {up_after:.1f}s")


def start_slow_migration(nodes, name: str, mib_per_second: int = 1) -> tuple[M.Migration, str, str]:
    vm = nodes.cluster.get(name)
    source = vm.status.node_name
    migration = nodes.client.create_migration(name, nodes.other(source), bandwidth_mib_per_second=mib_per_second)
    nodes.wait_migration(migration.metadata.name,
                         lambda m: m.status.phase == M.MIGRATION_PHASE_RUNNING and m.status.data_processed_bytes > 0
                         or m.status.phase in FINAL, timeout=120, what="the migration to move memory")
    return migration, source, vm.status.instance_uid


def assert_still_on(nodes, name: str, source: str, uid: str) -> None:
    vm = nodes.cluster.get(name)
    assert vm.status.node_name == source and vm.status.instance_uid == uid
    assert vm.status.phase == RUNNING and not vm.status.migration_target.migration_name
    wait_for(lambda: len(qemu_pids(uid)) == 1, timeout=30, what="the target's QEMU to go: exactly one QEMU")
    target_dir = nodes.cluster.state_dir(nodes.other(source)) / "vms" / uid.replace("-", "")[:12]
    wait_for(lambda: not target_dir.exists(), timeout=30, what="the incoming run's directory to go")


def test_cancel_mid_way_keeps_the_guest_on_its_source(nodes, pet):
    migration, source, uid = start_slow_migration(nodes, pet)
    nodes.cli("migrate", pet, "--cancel")
    ended = nodes.wait_final(migration.metadata.name)
    assert ended.status.phase == M.MIGRATION_PHASE_FAILED, ended.status
    assert ended.status.reason == "Cancelled", ended.status
    assert_still_on(nodes, pet, source, uid)
    nodes.uptime(pet)  # the guest answers


def test_a_target_without_room_fails_and_changes_nothing(nodes, pet):
    before = nodes.cluster.get(pet)
    migration = nodes.client.create_migration(pet, "tiny")
    ended = nodes.wait_final(migration.metadata.name, timeout=30)
    assert ended.status.phase == M.MIGRATION_PHASE_FAILED and ended.status.reason == "TargetUnschedulable", ended.status
    after = nodes.cluster.get(pet)
    assert (after.status.node_name, after.status.instance_uid) == (before.status.node_name, before.status.instance_uid)
    assert not after.status.migration_target.migration_name


def test_target_launcher_killed_mid_way_fails_the_migration(nodes, pet):
    migration, source, uid = start_slow_migration(nodes, pet, 2)
    target_dir = nodes.cluster.state_dir(nodes.other(source)) / "vms" / uid.replace("-", "")[:12]
    launchers = wait_for(lambda: [pid for pid in pids_mentioning(f"--vm-dir\0{target_dir}\0")
                                  if b"launcher" in Path(f"/proc/{pid}/cmdline").read_bytes()],
                         timeout=10, what="the incoming launcher")
    for pid in launchers:
        os.kill(pid, signal.SIGKILL)
    ended = nodes.wait_final(migration.metadata.name)
    assert ended.status.phase == M.MIGRATION_PHASE_FAILED and ended.status.reason == "TargetFailed", ended.status
    print(f"target launcher killed: migration failed with {ended.status.reason}: {ended.status.message}")
    assert_still_on(nodes, pet, source, uid)


def test_source_handler_restarted_mid_way_ends_cleanly(nodes, pet):
    """Only the handler dies (its launchers and guests live on): the new handler re-attaches
    to the job, or the job fails and says so; either way one guest, running."""
    migration, source, uid = start_slow_migration(nodes, pet, 10)
    nodes.cluster.kill_handler(source)
    nodes.start_handler(source)
    ended = nodes.wait_final(migration.metadata.name, timeout=120)
    vm = nodes.cluster.get(pet)
    assert vm.status.phase == RUNNING and vm.status.instance_uid == uid, vm.status
    if ended.status.phase == M.MIGRATION_PHASE_SUCCEEDED:
        assert vm.status.node_name == nodes.other(source)
    else:
        assert vm.status.node_name == source and ended.status.reason, ended.status
    wait_for(lambda: len(qemu_pids(f"guest={pet},")) == 1, timeout=30, what="exactly one QEMU of the VM")
    print(f"source handler restarted mid-migration: {M.MigrationPhase.Name(ended.status.phase)} "
          f"{ended.status.reason} {ended.status.message[:120]}")
    assert nodes.uptime(pet) > 0


def test_source_node_killed_mid_way_the_vm_runs_exactly_once(nodes, pet):
    migration, source, uid = start_slow_migration(nodes, pet, 2)
    nodes.cluster.kill_handler(source)
    for pid in netns_pids(nodes.netns[source]):  # its launchers, libvirt daemons and QEMU
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed_at = time.monotonic()
    source_dir = str(nodes.cluster.state_dir(source))
    wait_for(lambda: not [p for p in qemu_pids(uid) if source_dir.encode() in Path(f"/proc/{p}/cmdline").read_bytes()],
             timeout=10, what="the source's QEMU to die")
    ended = None
    with RunSampler(pet) as sampler:  # from now on: never two QEMU of one run at once
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            vm = nodes.cluster.get(pet)
            ended = nodes.client.get_migration(migration.metadata.name)
            if vm.status.phase == RUNNING and vm.status.node_name != source and ended.status.phase in FINAL:
                break
            time.sleep(0.2)
        time.sleep(3)
    recovered = time.monotonic() - killed_at
    vm = nodes.cluster.get(pet)
    assert vm.status.phase == RUNNING and vm.status.node_name == nodes.other(source), vm.status
    assert ended.status.phase == M.MIGRATION_PHASE_FAILED and ended.status.reason == "SourceNodeLost", ended.status
    assert max(sampler.worst.values(), default=0) <= 1, sampler.worst
    wait_for(lambda: len(qemu_pids(f"guest={pet},")) == 1, timeout=20, what="exactly one QEMU of the VM")
    print(f"source node killed mid-migration: migration {ended.status.reason}; VM running on "
          f"{vm.status.node_name} after {recovered:.1f}s")
    nodes.start_handler(source)  # back for the drain case
    # The restarted handler removes the dead run without starting a launcher for it.
    wait_for(lambda: not (Path(source_dir) / "vms" / uid.replace("-", "")[:12]).exists(),
             timeout=30, what="the dead run's directory to go")
    assert len(qemu_pids(f"guest={pet},")) == 1  # one guest in all: no copy came back


def test_drain_moves_live_migratable_vms_and_stops_the_others(nodes, pet):
    node = nodes.cluster.get(pet).status.node_name
    other = nodes.other(node)
    nodes.client.cordon_node(other)
    try:
        stay = nodes.create("stayer", eviction_strategy=vm_pb2.EVICTION_STRATEGY_NONE)
        assert stay.status.node_name == node
    finally:
        nodes.client.cordon_node(other, cordon=False)
    pet_vm = nodes.cluster.get(pet)
    result = nodes.cli("drain", node, "--timeout", "300")
    assert "drained" in result.stdout, result.stdout
    moved = nodes.cluster.get(pet)
    assert moved.status.node_name == other and moved.status.phase == RUNNING
    assert moved.status.instance_uid == pet_vm.status.instance_uid  # live-migrated, not restarted
    stopped = nodes.cluster.get("stayer")
    assert stopped.status.node_name != node or stopped.status.phase != RUNNING
    nodes.cli("uncordon", node)
    from corral.v1 import node_pb2
    assert not nodes.cluster.nodes.GetNode(node_pb2.GetNodeRequest(name=node), timeout=5).node.spec.unschedulable
