"""Live migration with mutual TLS everywhere, end to end: two network-namespace nodes
(tests/netnodes.py) whose handlers hold node certificates (CN node:NAME, SAN URI
corral://node/NAME, DNS NAME.node.corral, their IP), a controller serving mutual TLS, no
--insecure anywhere. A real TCG guest moves and keeps running; a capture of every frame on
the host's side of the nodes' links shows the guest's memory never crossed in the clear
(the guest writes a recognisable text into its RAM first). The same case on plaintext nodes
(--insecure, QEMU's stream direct) is the control: there the capture does find the text."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid

import pytest

from corral.v1 import migration_pb2, vm_pb2
from tests.cluster import wait_for
from tests.netnodes import TLSNodes, TwoNodes
from tests.test_migration import qemu_pids, remove_stale_console_locks
from tests.test_console import Console

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
M = migration_pb2
#: What the guest writes into its RAM (built in the guest from pieces: the typed command
#: never contains it).
SECRET = b"CORRAL-SECRET-42-PAGE"
SECRET_BYTES = 4 * 1024 * 1024
ETH_P_ALL = 0x0003


class Capture:
    """Every frame the host's namespace sees (the nodes' veth ends and the bridge), as root:
    how many bytes went between the two node addresses, and how many frames held SECRET."""

    def __init__(self, addresses: tuple[str, str]) -> None:
        self.ips = {socket.inet_aton(a) for a in addresses}
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024 * 1024)
        self.sock.settimeout(0.5)
        self.between = 0
        self.with_secret = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                frame = self.sock.recv(262144)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            # Ethernet + IPv4: source and destination addresses at 26..34.
            if len(frame) < 34 or frame[12:14] != b"\x08\x00":
                continue
            if frame[26:30] in self.ips and frame[30:34] in self.ips:
                self.between += len(frame)
                if SECRET in frame:
                    self.with_secret += 1

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module", params=["mutual-tls", "plaintext"])
def nodes(request, tmp_path_factory, guest_dir):
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("needs root and iproute2 for network namespaces")
    if shutil.which("etcd") is None or shutil.which("libvirtd") is None:
        pytest.skip("needs etcd and libvirtd")
    kind = TLSNodes if request.param == "mutual-tls" else TwoNodes
    with kind(tmp_path_factory.mktemp(f"migration-{request.param}"), guest_dir,
              prefix=f"/migration-{request.param}-{uuid.uuid4().hex[:6]}/") as net:
        for node in ("na", "nb"):
            net.start_handler(node)
        yield net


def console_run(net: TwoNodes, name: str, command: bytes, answer: bytes) -> bytes:
    remove_stale_console_locks()
    console = Console(net.cluster.vms, name)
    try:
        return console.run(command, answer, timeout=90).group(0)
    finally:
        console.close()


def uptime(net: TwoNodes, name: str) -> float:
    return float(console_run(net, name, b"cat /proc/uptime", rb"(\d+\.\d+) \d+\.\d+").split()[0])


def test_a_guest_moves_over_mutual_tls_and_its_memory_never_crosses_in_the_clear(nodes):
    vm = nodes.cluster.guest_vm("sealed")
    vm.spec.eviction_strategy = vm_pb2.EVICTION_STRATEGY_LIVE_MIGRATE
    nodes.cluster.create(vm)
    before = nodes.cluster.wait_phase("sealed", RUNNING, timeout=90)
    source, uid = before.status.node_name, before.status.instance_uid
    target = nodes.other(source)
    console_run(nodes, "sealed", b"yes CORRAL-SECRET-$((6*7))-PAGE | head -c %d > /tmp/secret; echo WROTE-$((1+1))"
                % SECRET_BYTES, rb"WROTE-2")
    up_before = uptime(nodes, "sealed")

    capture = Capture((nodes.addresses["na"], nodes.addresses["nb"]))
    started = time.monotonic()
    try:
        migration = nodes.client.create_migration("sealed", target)
        ended = wait_for(lambda: (m := nodes.client.get_migration(migration.metadata.name)).status.phase
                         in (M.MIGRATION_PHASE_SUCCEEDED, M.MIGRATION_PHASE_FAILED) and m,
                         timeout=180, interval=0.2, what="the migration to end")
        took = time.monotonic() - started
        time.sleep(0.5)
    finally:
        capture.stop()
    assert ended.status.phase == M.MIGRATION_PHASE_SUCCEEDED, ended.status
    after = nodes.cluster.get("sealed")
    assert (after.status.node_name, after.status.instance_uid, after.status.phase) == (target, uid, RUNNING)
    up_after = uptime(nodes, "sealed")
    assert up_after > up_before  # the same guest, not rebooted
    wait_for(lambda: len(qemu_pids(uid)) == 1, timeout=20, what="exactly one QEMU of the run")
    downtime = wait_for(lambda: nodes.client.get_migration(migration.metadata.name).status.downtime_ms,
                        timeout=10, what="the downtime (the target sends it)")
    if not isinstance(nodes, TLSNodes):  # the control: the capture does see memory in the clear
        assert capture.with_secret > 0, capture.between
        print(f"plaintext migration {source} -> {target}: {took:.1f}s, downtime {downtime} ms, "
              f"{capture.with_secret} frames of guest memory seen in the clear")
        return
    # The guest's memory (with the 4 MiB of text) crossed between the nodes, encrypted.
    assert capture.between > SECRET_BYTES, capture.between
    assert capture.with_secret == 0, f"{capture.with_secret} frames carried guest memory in the clear"
    # Through the proxy, authenticated as the source node; no stream port was reported.
    target_log = (nodes.base / f"handler-{target}.log").read_text()
    assert f"from node {source} (mutual TLS)" in target_log
    assert "QEMU's stream tunnelled" in target_log
    print(f"migration {source} -> {target} over mutual TLS: {took:.1f}s, downtime {downtime} ms, "
          f"{capture.between / 2**20:.1f} MiB on the wire between the nodes, none of it plaintext guest memory")


@pytest.mark.parametrize("nodes", ["mutual-tls"], indirect=True)  # the plaintext case is test_migration.py's
def test_a_tunnelled_migration_can_be_cancelled_mid_way(nodes):
    """Abort works on the tunnelled stream too: the guest stays on its source, one QEMU.
    Its own VM: with parallel workers the other test's may live in another process."""
    nodes.cluster.create(nodes.cluster.guest_vm("held"))
    vm = nodes.cluster.wait_phase("held", RUNNING, timeout=90)
    source, uid = vm.status.node_name, vm.status.instance_uid
    migration = nodes.client.create_migration("held", nodes.other(source), bandwidth_mib_per_second=1)
    wait_for(lambda: nodes.client.get_migration(migration.metadata.name).status.data_processed_bytes > 0,
             timeout=120, interval=0.2, what="memory to move")
    nodes.client.cancel_migration(migration.metadata.name)
    ended = wait_for(lambda: (m := nodes.client.get_migration(migration.metadata.name)).status.phase
                     in (M.MIGRATION_PHASE_SUCCEEDED, M.MIGRATION_PHASE_FAILED) and m,
                     timeout=120, interval=0.2, what="the migration to end")
    assert ended.status.phase == M.MIGRATION_PHASE_FAILED and ended.status.reason == "Cancelled", ended.status
    vm = nodes.cluster.get("held")
    assert (vm.status.node_name, vm.status.instance_uid, vm.status.phase) == (source, uid, RUNNING)
    wait_for(lambda: len(qemu_pids(uid)) == 1, timeout=30, what="the target's QEMU to go")
    assert uptime(nodes, "held") > 0


@pytest.mark.parametrize("nodes", ["mutual-tls"], indirect=True)
def test_a_post_copy_policy_runs_pre_copy_through_the_tunnel_and_says_why(nodes):
    """TLS nodes tunnel QEMU's stream, which libvirt cannot do for post-copy: the nodes say so
    in their records, and a migration whose policy allows post-copy is admitted as pre-copy
    with the reason in its status (it still moves the guest)."""
    for node in ("na", "nb"):
        status = nodes.client.get_node(node).status
        assert not status.post_copy_ready and "tunnelled" in status.post_copy_message, status
    nodes.cluster.create(nodes.cluster.guest_vm("choosy"))  # its own VM, as the cancel case
    vm = nodes.cluster.wait_phase("choosy", RUNNING, timeout=90)
    target = nodes.other(vm.status.node_name)
    migration = nodes.client.create_migration("choosy", target, allow_post_copy=True)
    ended = wait_for(lambda: (m := nodes.client.get_migration(migration.metadata.name)).status.phase
                     in (M.MIGRATION_PHASE_SUCCEEDED, M.MIGRATION_PHASE_FAILED) and m,
                     timeout=180, interval=0.2, what="the migration to end")
    assert ended.status.phase == M.MIGRATION_PHASE_SUCCEEDED, ended.status
    assert ended.status.mode == M.MIGRATION_MODE_PRE_COPY
    assert ended.status.post_copy_message.startswith("post-copy off, pre-copy only: target node "), ended.status
    assert "tunnelled" in ended.status.post_copy_message
    events = [e.reason for e in nodes.cluster.get("choosy").status.events]
    assert "PostCopyUnavailable" in events
