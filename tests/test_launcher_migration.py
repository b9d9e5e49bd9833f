"""Live migration between two session-mode launchers in two network namespaces ("nodes").

No handlers: the test starts the launchers itself (as VM uids, like the handler's isolation),
writes the target's ``incoming`` marker, and stands in for the handlers' migration tunnel
with a root unix->unix byte proxy (source's DIR/mig.sock -> target's libvirt socket). QEMU's
memory stream goes over TCP between the namespaces' addresses, as between real nodes.
Real guests under TCG (128 MiB). One namespace pair for the module.
"""
from __future__ import annotations

import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from corral.v1 import launcher_pb2, migration_pb2
from handler.isolation import remove_stale_console_locks
from tests.cluster import private_subnet
from tests.test_launcher import Launcher, pid_alive, running, session_daemons

pytestmark = pytest.mark.guest
pb = launcher_pb2
MIGRATION_PORT = 49300


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def nodes() -> Iterator[dict[str, dict[str, str]]]:
    """Two namespaces joined by a veth pair: a at 10.78.N.1, b at 10.78.N.2."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("libvirtd") is None:
        pytest.skip("needs root, iproute2 and libvirtd")
    tag = uuid.uuid4().hex[:6]
    subnet = private_subnet()
    made = {"a": {"ns": f"cmiga-{tag}", "ip": f"10.78.{subnet}.1", "veth": f"cma{tag}"},
            "b": {"ns": f"cmigb-{tag}", "ip": f"10.78.{subnet}.2", "veth": f"cmb{tag}"}}
    try:
        for node in made.values():
            ip("netns", "add", node["ns"])
        ip("link", "add", made["a"]["veth"], "type", "veth", "peer", "name", made["b"]["veth"])
        for node in made.values():
            ip("link", "set", node["veth"], "netns", node["ns"])
            ip("-n", node["ns"], "addr", "add", f"{node['ip']}/24", "dev", node["veth"])
            ip("-n", node["ns"], "link", "set", node["veth"], "up")
            ip("-n", node["ns"], "link", "set", "lo", "up")
        yield made
    finally:
        for node in made.values():
            subprocess.run(["ip", "netns", "del", node["ns"]], capture_output=True)


class NodeLauncher(Launcher):
    """A session-mode launcher started inside a node's namespace."""

    def __init__(self, vm_dir: Path, cache: Path, uid: int, netns: str) -> None:
        super().__init__(vm_dir, cache, "session", uid)
        self.netns = netns

    def start(self) -> subprocess.Popen:
        log = open(self.dir / "launcher.log", "ab")
        # `ip netns exec` execs: the Popen's pid is the launcher's.
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-m", "launcher.main",
             "--vm-dir", str(self.dir), "--emulation", "on", "--capabilities-cache", str(self.cache),
             "--libvirt-mode", "session", "--isolate"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc


class Tunnel:
    """The handlers' stand-in: unix listener (owned by the source's uid) -> target's libvirt socket."""

    def __init__(self, listen: Path, owner: int, target: Path) -> None:
        self.path, self.target = listen, target
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(listen))
        os.chown(listen, owner, owner)
        os.chmod(listen, 0o600)
        self.server.listen(8)
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                up.connect(str(self.target))
            except OSError:
                conn.close()
                continue
            self.conns += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass

    def close(self) -> None:
        self.server.close()
        for conn in self.conns:
            conn.close()


class Pair:
    """A running guest on node a and an incoming launcher on node b, plus the tunnel."""

    def __init__(self, nodes: dict, guest_dir: Path, cache: Path, uid: int) -> None:
        self.nodes = nodes
        base = Path(tempfile.mkdtemp(prefix="cm-", dir="/tmp"))
        base.chmod(0o711)
        self.base = base
        (base / "a").mkdir()
        (base / "b").mkdir()
        self.src = NodeLauncher(base / "a", cache, uid, nodes["a"]["ns"])
        self.dst = NodeLauncher(base / "b", cache, uid + 1, nodes["b"]["ns"])
        self.src.write_vm(str(guest_dir / "vmlinuz"), str(guest_dir / "initrd.gz"))
        shutil.copy(self.src.dir / "vm.binpb", self.dst.dir / "vm.binpb")
        (self.dst.dir / "incoming").touch()
        self.tunnel: Tunnel | None = None

    def open_tunnel(self) -> None:
        self.tunnel = Tunnel(self.src.dir / "mig.sock", self.src.uid,
                             self.dst.dir / "run" / "libvirt" / "libvirt-sock")

    def request(self, **policy) -> launcher_pb2.MigrateDomainRequest:
        prepared = self.dst.stub().PrepareIncoming(pb.PrepareIncomingRequest(), timeout=10)
        assert prepared.libvirt_socket_path == str(self.dst.dir / "run" / "libvirt" / "libvirt-sock")
        assert str(self.dst.dir / "serial.log") in prepared.domain_xml
        return pb.MigrateDomainRequest(
            destination_uri=f"qemu+unix:///session?socket={self.src.dir / 'mig.sock'}",
            migration_uri=f"tcp://{self.nodes['b']['ip']}:{MIGRATION_PORT}",
            listen_address=self.nodes["b"]["ip"], destination_xml=prepared.domain_xml, **policy)

    def cleanup(self) -> None:
        if os.environ.get("CORRAL_TEST_PRINT_LOGS"):
            print(f"--- source log\n{self.src.log()}\n--- target log\n{self.dst.log()}")
        if self.tunnel is not None:
            self.tunnel.close()
        self.src.cleanup()
        self.dst.cleanup()
        shutil.rmtree(self.base, ignore_errors=True)


_uids = [240000 + (os.getpid() % 1000) * 10]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def session_cache(nodes) -> Iterator[Path]:
    """The node's capabilities cache as the handler warms it in session mode (--warm-cache
    --libvirt-mode session: probed by a scratch session daemon, since an embed-probed cache
    does not serve one): launchers then skip QEMU's ~4 s probe."""
    base = Path(tempfile.mkdtemp(prefix="cmc-", dir="/tmp"))
    base.chmod(0o755)
    result = subprocess.run([sys.executable, "-m", "launcher.main", "--warm-cache", str(base / "probe"),
                             "--capabilities-cache", str(base / "cache"), "--libvirt-mode", "session"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list((base / "cache").glob("*.xml")), result.stderr[-2000:]
    (base / "cache").chmod(0o755)
    yield base / "cache"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pair(nodes, guest_dir: Path, session_cache: Path) -> Iterator[Pair]:
    # No handler runs here to clear pty locks left by dead QEMUs of other tests' VM users
    # (a reused pty's console would fail): do what the handler does before a console opens.
    remove_stale_console_locks()
    _uids[0] += 2
    made = Pair(nodes, guest_dir, session_cache, _uids[0])
    yield made
    made.cleanup()


def uptime(lau: Launcher, timeout: float = 40) -> float:
    """The guest's /proc/uptime, typed into its serial console through AttachConsole (attached
    again if the stream ends; every error is kept for the failure message)."""
    errors: list[str] = []
    output = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        keys: queue.Queue[bytes | None] = queue.Queue()

        def requests():
            while (data := keys.get()) is not None:
                yield pb.AttachConsoleRequest(data=data)

        call = lau.stub().AttachConsole(requests(), timeout=timeout + 5)
        done = threading.Event()

        def read() -> None:
            try:
                for response in call:
                    output.extend(response.data)
                errors.append("console stream ended")
            except grpc.RpcError as exc:
                errors.append(f"{exc.code()}: {exc.details()}")
            done.set()

        threading.Thread(target=read, daemon=True).start()
        try:
            while time.monotonic() < deadline and not done.is_set():
                keys.put(b"\necho UP=$(cut -d' ' -f1 /proc/uptime)\n")
                time.sleep(1.0)
                match = re.search(rb"UP=([0-9]+\.[0-9]+)", bytes(output))
                if match:
                    if errors:
                        print(f"uptime: console errors before it answered: {errors}")
                    return float(match.group(1))
        finally:
            call.cancel()
            keys.put(None)
        time.sleep(0.5)
    serial = (lau.dir / "serial.log").read_bytes()[-300:] if (lau.dir / "serial.log").exists() else b""
    raise AssertionError(f"no uptime on the console: {bytes(output)[-300:]!r}; errors {errors}; "
                         f"serial.log ends {serial!r}")


def start_both(pair: Pair) -> tuple[subprocess.Popen, subprocess.Popen, launcher_pb2.DomainStatus]:
    source = pair.src.start()
    status = pair.src.wait_status(running, timeout=40)
    target = pair.dst.start()
    incoming = pair.dst.wait_status(lambda s: s.state == pb.DOMAIN_STATE_STARTING and s.reason == "incoming")
    assert incoming.qemu_pid == 0
    pair.src.wait_serial("CORRAL-GUEST-READY", timeout=60)
    pair.open_tunnel()
    return source, target, status


def first_progress(stream) -> list[launcher_pb2.MigrateDomainResponse]:
    """Messages until one shows data sent (the target's QEMU is up)."""
    seen = []
    for message in stream:
        seen.append(message)
        if message.data_processed_bytes > 0:
            return seen
    raise AssertionError(f"stream ended before any progress: {seen}")


def test_migrate_running_guest_then_target_launcher_restart(pair: Pair) -> None:
    source, target, before = start_both(pair)
    up_before = uptime(pair.src)
    watch = pair.src.stub().WatchDomainStatus(pb.WatchDomainStatusRequest(), timeout=120)
    t0 = time.monotonic()
    messages = list(pair.src.stub().MigrateDomain(pair.request(), timeout=120))
    elapsed = time.monotonic() - t0
    assert messages and messages[-1].done, messages
    assert all(m.mode == migration_pb2.MIGRATION_MODE_PRE_COPY for m in messages)
    print(f"migrated in {elapsed:.1f}s, {len(messages)} messages; last progress {messages[-2:]}")

    # The source's run ended: final SHUTOFF "migrated", launcher gone, daemons stopped.
    assert source.wait(timeout=15) == 0
    statuses = [m.status for m in watch]
    assert statuses[-1].state == pb.DOMAIN_STATE_SHUTOFF and statuses[-1].reason == "migrated", statuses[-1]
    assert not pid_alive(before.qemu_pid)
    deadline = time.monotonic() + 5
    while session_daemons(pair.src.uid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not session_daemons(pair.src.uid)

    # The target adopted the guest: same uuid, running, the downtime reported.
    arrived = pair.dst.wait_status(lambda s: running(s) and s.qemu_pid > 0, timeout=15)
    assert arrived.vm_uid == before.vm_uid
    assert arrived.launcher_pid == target.pid
    assert "migrated in" in arrived.message, arrived.message
    assert (pair.dst.dir / "started").exists()
    up_after = uptime(pair.dst)
    assert up_after > up_before, "the guest rebooted instead of moving"

    # A restarted target launcher adopts it (never boots another).
    target.kill()
    target.wait()
    again = pair.dst.start()
    status = pair.dst.wait_status(lambda s: s.launcher_pid == again.pid and running(s))
    assert status.qemu_pid == arrived.qemu_pid
    final = pair.dst.stub().KillDomain(pb.KillDomainRequest(), timeout=20).status
    assert final.state == pb.DOMAIN_STATE_SHUTOFF
    assert again.wait(timeout=15) == 0
    assert not pid_alive(arrived.qemu_pid)


def test_cancel_timeout_and_target_loss_keep_the_source_running(pair: Pair) -> None:
    source, target, before = start_both(pair)

    # An incoming launcher restarted before the guest came never boots one.
    target.kill()
    target.wait()
    target = pair.dst.start()
    status = pair.dst.wait_status(lambda s: s.launcher_pid == target.pid)
    assert status.state == pb.DOMAIN_STATE_STARTING and status.reason == "incoming"
    time.sleep(2)
    status = pair.dst.status()
    assert status.state == pb.DOMAIN_STATE_STARTING and status.qemu_pid == 0
    assert not (pair.dst.dir / "started").exists()

    def source_still_runs() -> None:
        status = pair.src.wait_status(lambda s: running(s) and s.qemu_pid == before.qemu_pid)
        assert status.launcher_pid == source.pid

    def target_empty() -> None:
        status = pair.dst.wait_status(lambda s: s.state == pb.DOMAIN_STATE_STARTING, timeout=10)
        assert status.qemu_pid == 0

    # 1. AbortMigration: ABORTED "cancelled"; a second MigrateDomain re-attaches to the job.
    stream = pair.src.stub().MigrateDomain(pair.request(bandwidth_mib_per_second=4), timeout=120)
    first_progress(stream)
    attached = pair.src.stub().MigrateDomain(pair.request(bandwidth_mib_per_second=4), timeout=120)
    assert next(attached).data_total_bytes > 0
    pair.src.stub().AbortMigration(pb.AbortMigrationRequest(), timeout=10)
    for stream_ in (stream, attached):
        with pytest.raises(grpc.RpcError) as err:
            list(stream_)
        assert err.value.code() == grpc.StatusCode.ABORTED and "cancelled" in err.value.details()
    source_still_runs()
    target_empty()

    # 2. The completion timeout (no post-copy allowed): ABORTED "did not complete within".
    stream = pair.src.stub().MigrateDomain(
        pair.request(bandwidth_mib_per_second=4, completion_timeout_seconds=2), timeout=120)
    with pytest.raises(grpc.RpcError) as err:
        list(stream)
    assert err.value.code() == grpc.StatusCode.ABORTED and "did not complete within 2s" in err.value.details()
    source_still_runs()
    target_empty()

    # 3. The target's run is killed mid-way: the migration fails, the guest stays.
    stream = pair.src.stub().MigrateDomain(pair.request(bandwidth_mib_per_second=4), timeout=120)
    first_progress(stream)
    final = pair.dst.stub().KillDomain(pb.KillDomainRequest(), timeout=20).status
    assert final.qemu_pid == 0
    assert target.wait(timeout=15) == 0
    with pytest.raises(grpc.RpcError) as err:
        list(stream)
    assert err.value.code() != grpc.StatusCode.ABORTED, err.value.details()
    source_still_runs()
    assert not session_daemons(pair.dst.uid)
    assert up_is_alive(pair.src)


def up_is_alive(lau: Launcher) -> bool:
    return uptime(lau) > 0


def test_source_launcher_restarted_mid_migration_follows_the_job(pair: Pair) -> None:
    source, target, before = start_both(pair)
    stream = pair.src.stub().MigrateDomain(pair.request(bandwidth_mib_per_second=12), timeout=120)
    first_progress(stream)
    source.kill()  # libvirtd drives a peer-to-peer migration by itself
    source.wait()
    source = pair.src.start()
    status = pair.src.wait_status(lambda s: s.launcher_pid == source.pid and s.state != pb.DOMAIN_STATE_STARTING)
    if status.state == pb.DOMAIN_STATE_RUNNING:  # still moving: MigrateDomain follows the job
        messages = list(pair.src.stub().MigrateDomain(pair.request(bandwidth_mib_per_second=12), timeout=120))
        assert messages[-1].done, messages
        assert source.wait(timeout=15) == 0
    else:  # it finished while no launcher ran: the new one says the guest left
        assert status.state == pb.DOMAIN_STATE_SHUTOFF and status.reason == "migrated", status
        pair.src.stub().KillDomain(pb.KillDomainRequest(), timeout=20)
        assert source.wait(timeout=15) == 0
    arrived = pair.dst.wait_status(lambda s: running(s) and s.qemu_pid > 0, timeout=30)
    assert arrived.vm_uid == before.vm_uid and "migrated in" in arrived.message
    assert not pid_alive(before.qemu_pid)
    pair.dst.stub().KillDomain(pb.KillDomainRequest(), timeout=20)
    assert target.wait(timeout=15) == 0
