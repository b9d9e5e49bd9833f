"""The handler's part of live migration without guests: the proxy (TCP header + unix
forwarding, half-close, refusals, no leaked threads) and pieces of the orchestration."""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from corral.v1 import launcher_pb2, vm_pb2
from handler.agent import observed_phase
from handler.migration import is_migrated_away
from handler.migration_proxy import HEADER, SourceTunnel, TargetProxy, read_header


def echo_server(path: str) -> tuple[socket.socket, threading.Thread]:
    """A unix server that echoes each connection until EOF, then half-closes."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return

            def one(conn=conn):
                with conn:
                    while data := conn.recv(65536):
                        conn.sendall(data)
                    conn.shutdown(socket.SHUT_WR)
            threading.Thread(target=one, daemon=True).start()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def proxy_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("mig-"))


@pytest.fixture
def short_dir():
    import tempfile
    import shutil
    path = Path(tempfile.mkdtemp(prefix="mig-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_source_tunnel_to_target_proxy_to_libvirt_socket(short_dir):
    before = proxy_threads()
    libvirt_sock = str(short_dir / "libvirt-sock")
    server, _ = echo_server(libvirt_sock)
    asked = []

    def resolve(uid, source_node):
        asked.append((uid, source_node))
        return libvirt_sock if uid == "run-1" else None

    proxy = TargetProxy("127.0.0.1:0", resolve)
    proxy.start()
    tunnel = SourceTunnel(short_dir / "mig.sock", target_address=f"127.0.0.1:{proxy.port}", instance_uid="run-1",
                          owner=(os.getuid(), os.getgid()))
    tunnel.start()
    try:
        assert oct((short_dir / "mig.sock").stat().st_mode & 0o777) == oct(0o600)
        payload = os.urandom(3 * 1024 * 1024)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(short_dir / "mig.sock"))
            sender = threading.Thread(target=lambda: (client.sendall(payload), client.shutdown(socket.SHUT_WR)))
            sender.start()
            echoed = recv_all(client)  # the half-close went through both hops and came back
            sender.join()
        assert echoed == payload
        assert asked == [("run-1", None)]  # plaintext: no node to check
    finally:
        tunnel.close()
        proxy.close()
        server.close()
    assert not (short_dir / "mig.sock").exists()
    deadline = time.monotonic() + 5
    while proxy_threads() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy_threads() == before


def test_proxy_refuses_runs_not_migrating_here_and_bad_headers(short_dir):
    proxy = TargetProxy("127.0.0.1:0", lambda uid, node: None)
    proxy.start()
    try:
        for header in (HEADER + b"run-2\n", b"GET / HTTP/1.0\n", HEADER + b"../../etc\n"):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
                client.sendall(header)
                assert recv_all(client) == b""  # closed without a byte
        assert proxy.connections == 0
    finally:
        proxy.close()


def test_closing_the_tunnel_closes_open_connections(short_dir):
    libvirt_sock = str(short_dir / "libvirt-sock")
    server, _ = echo_server(libvirt_sock)
    proxy = TargetProxy("127.0.0.1:0", lambda uid, node: libvirt_sock)
    proxy.start()
    tunnel = SourceTunnel(short_dir / "mig.sock", target_address=f"127.0.0.1:{proxy.port}", instance_uid="r")
    tunnel.start()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(short_dir / "mig.sock"))
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"
        tunnel.close()
        client.settimeout(5)
        assert recv_all(client) == b""
    finally:
        client.close()
        proxy.close()
        server.close()


def test_an_unreachable_target_drops_the_connection(short_dir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tunnel = SourceTunnel(short_dir / "mig.sock", target_address=f"127.0.0.1:{port}", instance_uid="r")
    tunnel.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(short_dir / "mig.sock"))
            client.settimeout(5)
            assert recv_all(client) == b""
    finally:
        tunnel.close()


def test_read_header_takes_only_the_line():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(HEADER + b"0a1b-2c\nREST")
        assert read_header(b) == "0a1b-2c"
        assert b.recv(4) == b"REST"


def test_a_source_whose_guest_left_is_not_reported_as_ended():
    migrated = launcher_pb2.DomainStatus(state=launcher_pb2.DOMAIN_STATE_SHUTOFF, reason="migrated")
    assert is_migrated_away(migrated)
    assert observed_phase(migrated) is None
    shutdown = launcher_pb2.DomainStatus(state=launcher_pb2.DOMAIN_STATE_SHUTOFF, reason="shutdown")
    assert observed_phase(shutdown) is not None


def test_why_a_guest_cannot_move_and_why_it_was_aborted():
    from corral.v1 import vm_pb2
    from handler.migration import abort_reason, arrival_downtime_ms, unmigratable
    vm = vm_pb2.VirtualMachine()
    vm.spec.disks.add(name="data", persistent=vm_pb2.PersistentDisk(path="/srv/disks/a.qcow2"))
    assert unmigratable(vm) == ""
    vm.spec.disks.add(name="scratch", ephemeral=vm_pb2.EphemeralDisk(base_image_path="/srv/images/b.qcow2"))
    assert "scratch" in unmigratable(vm)
    vm.spec.disks[-1].read_only = True
    assert unmigratable(vm) == ""

    vm.status.migration_target.migration_name = "m1"
    assert abort_reason(vm, "m1")[0] == "Cancelled"
    vm.status.migration_target.cancel_reason = "TargetFailed"
    vm.status.migration_target.cancel_message = "target node b: launcher exited"
    assert abort_reason(vm, "m1") == ("TargetFailed", "target node b: launcher exited")
    assert abort_reason(vm, "m0")[0] == "Superseded"

    status = launcher_pb2.DomainStatus(state=launcher_pb2.DOMAIN_STATE_RUNNING, reason="migrated",
                                       message="migrated in, downtime 212 ms, total 1400 ms")
    assert arrival_downtime_ms(status) == 212
    assert arrival_downtime_ms(launcher_pb2.DomainStatus(message="migrated in")) == 0


def test_migration_settings():
    from corral.settings import HandlerSettings
    settings = HandlerSettings()
    assert settings.migration_listen == "0.0.0.0:7102" and settings.libvirt_mode == "embed"
    assert HandlerSettings(migration_listen="10.0.0.2:0", libvirt_mode="session").libvirt_mode == "session"
    for bad in ({"migration_listen": "7102"}, {"libvirt_mode": "system"}):
        with pytest.raises(ValueError):
            HandlerSettings(**bad)


def test_handler_passes_the_libvirt_mode_to_launchers(tmp_path):
    from corral.settings import HandlerSettings
    from handler.main import launcher_command
    assert "--libvirt-mode" not in launcher_command(HandlerSettings(), tmp_path)
    command = launcher_command(HandlerSettings(libvirt_mode="session"), tmp_path, isolate=True)
    assert command[command.index("--libvirt-mode") + 1] == "session"


class _Launcher:
    """What reconcile_target asks of a run's launcher: its marks and whether anything runs."""

    def __init__(self, uid: str, marks: set[str], running: bool = False) -> None:
        self.uid, self.marks, self._running = uid, marks, running

    def marked(self, name: str) -> bool:
        return name in self.marks

    def running(self) -> bool:
        return self._running

    def qemu_pids(self) -> list[int]:
        return [4242] if self._running else []


class _Agent:
    def __init__(self, launchers: dict) -> None:
        self.node_name, self.launchers, self.pooled = "nb", launchers, []

    def _in_pool(self, uid: str, fn, *args) -> None:
        self.pooled.append((uid, fn.__name__, args))


def test_a_node_asked_back_clears_the_run_it_was_the_source_of_before_preparing():
    """A VM migrated nb -> na and, before nb cleared its source launcher of that run, asked back
    na -> nb (same instance uid): nb must clear that launcher (then prepare the target), not
    wait for a migration timeout with the run 'desired' and never cleaned up (seen in CI)."""
    from handler.migration import Migrations
    from handler.migration_source import MIGRATING_MARKER

    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = "pet"
    vm.status.instance_uid = "run-1"
    vm.status.node_name = "na"
    vm.status.migration_target.node_name = "nb"
    vm.status.migration_target.migration_name = "back"
    left = _Launcher("run-1", {MIGRATING_MARKER})  # its guest left: nothing runs
    agent = _Agent({"run-1": left})
    migrations = Migrations(agent)
    migrations.reconcile_target(vm)
    assert agent.pooled == [("run-1", "remove_incoming", (left,))]

    still = _Launcher("run-1", {MIGRATING_MARKER}, running=True)  # the guest may still be here
    agent = _Agent({"run-1": still})
    Migrations(agent).reconcile_target(vm)
    assert agent.pooled == [], "a source launcher that still runs is not touched"

    ended = _Launcher("run-1", set())  # a run of this VM that ended here, not by migration
    agent = _Agent({"run-1": ended})
    Migrations(agent).reconcile_target(vm)
    assert agent.pooled == []
