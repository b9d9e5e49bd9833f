"""The migration proxy with mutual TLS, on real sockets and real certificates (tests/certs.py):
the target's proxy forwards a connection to a run's libvirt socket only from the node that is
the source of that run's migration; everything else is refused before a byte reaches the
socket, and what crosses the network is not plaintext. The plaintext proxy (loopback, no TLS
files) is tested in tests/test_migration_handler_units.py."""
from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from corral.v1 import vm_pb2
from handler.migration_proxy import HEADER, MigrationTLS, RunSocket, SourceTunnel, TargetProxy
from handler.migration_target import TargetSide
from tests.certs import make_ca

RUN = "3f2b9c1e-0000-4000-8000-00000000abcd"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mig-certs")
    ca, other = make_ca(directory), make_ca(directory, "other-ca")

    def node(issuer, name: str, file: str | None = None):
        return issuer.issue(directory, file or name, f"node:{name}", uris=(f"corral://node/{name}",),
                            dns=(f"{name}.node.corral",), ips=("127.0.0.1",))

    return SimpleNamespace(
        ca=ca, na=node(ca, "na"), nb=node(ca, "nb"), nc=node(ca, "nc"),
        forged_na=node(other, "na", "forged-na"),  # names the source, but another CA signed it
        admin=ca.issue(directory, "admin", "admin", uris=("corral://role/admin",)))


def node_tls(pki, issued) -> MigrationTLS:
    return MigrationTLS.from_files(str(pki.ca.cert), str(issued.cert), str(issued.key))


class LibvirtSocket:
    """Stands for a run's libvirt socket: echoes, and counts the connections that reached it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.accepted = 0
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1

            def echo(conn=conn) -> None:
                with conn:
                    while data := conn.recv(65536):
                        conn.sendall(data)
            threading.Thread(target=echo, daemon=True).start()

    def close(self) -> None:
        self.server.close()


class Tap:
    """A TCP relay between the source's tunnel and the target's proxy that keeps a copy of
    every byte on the wire."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.wire = bytearray()
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for source, sink in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._copy, args=(source, sink), daemon=True).start()

    def _copy(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                with self.lock:
                    self.wire += data
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def short_dir():
    import shutil
    import tempfile
    path = Path(tempfile.mkdtemp(prefix="migtls-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def target(pki, short_dir):
    """Node nb's TLS proxy, receiving run RUN from node na (what Migrations.resolve decides
    from the VM's status: its node is the source)."""
    libvirt = LibvirtSocket(short_dir / "libvirt-sock")
    asked: list[tuple[str, str | None]] = []

    def resolve(uid: str, source_node: str | None) -> str | None:
        asked.append((uid, source_node))
        return libvirt.path if (uid, source_node) == (RUN, "na") else None

    proxy = TargetProxy("127.0.0.1:0", resolve, tls=node_tls(pki, pki.nb))
    proxy.start()
    yield SimpleNamespace(proxy=proxy, libvirt=libvirt, asked=asked)
    proxy.close()
    libvirt.close()


def _send_quietly(sock: socket.socket, payload: bytes) -> None:
    try:
        sock.sendall(payload)
    except OSError:
        pass


def exchange(path: Path, payload: bytes) -> bytes:
    """Send payload through the unix tunnel and read as much back (the echo)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(20)
        client.connect(str(path))
        sender = threading.Thread(target=lambda: _send_quietly(client, payload), daemon=True)
        sender.start()
        got = bytearray()
        while len(got) < len(payload):
            try:
                data = client.recv(65536)
            except ConnectionResetError:  # dropped: as good as closed
                data = b""
            if not data:
                break
            got += data
        sender.join(20)
        return bytes(got)


def test_the_source_node_reaches_the_run_over_mutual_tls_and_the_wire_is_not_plaintext(pki, target, short_dir):
    tap = Tap(target.proxy.port)
    tunnel = SourceTunnel(short_dir / "mig.sock", target_address=f"127.0.0.1:{tap.port}", instance_uid=RUN,
                          owner=(os.getuid(), os.getgid()), tls=node_tls(pki, pki.na), target_node="nb")
    tunnel.start()
    try:
        secret = b"GUEST-MEMORY-PAGE " * 4096
        payload = secret + os.urandom(2 * 1024 * 1024) + secret
        assert exchange(short_dir / "mig.sock", payload) == payload
        assert exchange(short_dir / "mig.sock", b"again") == b"again"  # a second connection
    finally:
        tunnel.close()
        tap.close()
    assert target.asked == [(RUN, "na"), (RUN, "na")]
    assert target.libvirt.accepted == 2
    with tap.lock:
        wire = bytes(tap.wire)
    assert len(wire) > 2 * len(payload)  # both directions went through the tap
    assert b"GUEST-MEMORY-PAGE" not in wire and HEADER not in wire and RUN.encode() not in wire


def attempt(port: int, context: ssl.SSLContext | None, *, server_name: str = "nb.node.corral") -> bytes | str:
    """A client that sends the header naming RUN and a request; what came back, or the error."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            sock = context.wrap_socket(raw, server_hostname=server_name) if context else raw
            sock.sendall(HEADER + RUN.encode() + b"\n" + b"REMOTE_PROCEDURE_CALL")
            return sock.recv(100)
    except (OSError, ssl.SSLError) as exc:
        return f"{type(exc).__name__}: {exc}"


def client_context(pki, issued=None, ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(ca or pki.ca.cert))
    if issued is not None:
        context.load_cert_chain(str(issued.cert), str(issued.key))
    return context


@pytest.mark.parametrize("who", ["plaintext", "no client certificate", "another CA", "a user certificate",
                                 "a node that is not the source"])
def test_the_target_proxy_refuses_all_but_the_source_node(pki, target, who):
    context = {"plaintext": None,
               "no client certificate": client_context(pki),
               "another CA": client_context(pki, pki.forged_na),
               "a user certificate": client_context(pki, pki.admin),
               "a node that is not the source": client_context(pki, pki.nc)}[who]
    answer = attempt(target.proxy.port, context)
    assert answer in (b"",) or isinstance(answer, str), answer  # closed or a TLS alert: never an echo
    time.sleep(0.2)
    assert target.libvirt.accepted == 0, who  # nothing reached the run's libvirt socket
    assert target.proxy.connections == 0
    if who == "a node that is not the source":
        assert target.asked == [(RUN, "nc")]  # authenticated as nc, then refused for this run
    else:
        assert target.asked == []  # refused before the header was even read
    # The source itself still gets through afterwards.
    assert attempt(target.proxy.port, client_context(pki, pki.na)) == b"REMOTE_PROCEDURE_CALL"
    assert target.libvirt.accepted == 1


def test_the_source_refuses_a_target_that_is_not_the_target_node(pki, short_dir, caplog):
    """A proxy answering with another node's certificate (a node record pointing at the wrong
    handler, or one node posing as another): the source's tunnel drops the connection. The
    impostor's close() waits for its handshake under way (which logs the refusal)."""
    libvirt = LibvirtSocket(short_dir / "libvirt-sock")
    impostor = TargetProxy("127.0.0.1:0", lambda uid, node: libvirt.path, tls=node_tls(pki, pki.nc))
    impostor.start()
    tunnel = SourceTunnel(short_dir / "mig.sock", target_address=f"127.0.0.1:{impostor.port}", instance_uid=RUN,
                          tls=node_tls(pki, pki.na), target_node="nb")
    tunnel.start()
    try:
        assert exchange(short_dir / "mig.sock", b"ping") == b""
        assert libvirt.accepted == 0
    finally:
        tunnel.close()
        impostor.close()
        libvirt.close()
    assert "refused" in caplog.text, caplog.text


def test_the_tls_files_must_load(pki, tmp_path):
    from corral.tls import TLSConfigError
    with pytest.raises(TLSConfigError, match="does not exist"):
        MigrationTLS.from_files(str(tmp_path / "none.pem"), str(pki.na.cert), str(pki.na.key))
    with pytest.raises(TLSConfigError, match="do not load"):
        MigrationTLS.from_files(str(pki.ca.cert), str(pki.na.cert), str(pki.nb.key))  # not its key


# -- who the target accepts: Migrations.resolve against the VM's status ----------------------------

RUN_DIR = Path("/tmp")  # root-owned, like a run's directory without isolation


class FakeTarget(TargetSide):
    def __init__(self, vm: vm_pb2.VirtualMachine, tls: object | None) -> None:
        launcher = SimpleNamespace(finished=False, vm_dir=RUN_DIR)
        self.agent = SimpleNamespace(node_name="nb", lock=threading.Lock(), desired={vm.metadata.name: vm},
                                     launchers={vm.status.instance_uid: launcher})
        self.incoming = {}
        self.tls = tls


def migrating_vm(source: str = "na", target: str = "nb") -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = "pet"
    vm.status.instance_uid = RUN
    vm.status.node_name = source
    vm.status.migration_target.migration_name = "pet-mig-1"
    vm.status.migration_target.node_name = target
    return vm


def test_resolve_accepts_only_the_source_of_the_admitted_migration():
    side = FakeTarget(migrating_vm(), tls=object())
    assert side.resolve(RUN, "na") == RunSocket(str(RUN_DIR / "run/libvirt/libvirt-sock"), owner=0)
    assert side.resolve(RUN, "nc") is None  # a node of the cluster, not this migration's source
    assert side.resolve(RUN, "nb") is None  # this node itself is not the source either
    assert side.resolve(RUN, None) is None  # a TLS proxy always names its client
    assert side.resolve("another-run", "na") is None
    assert FakeTarget(migrating_vm(target="nx"), tls=object()).resolve(RUN, "na") is None  # not migrating here
    not_migrating = migrating_vm()
    not_migrating.status.ClearField("migration_target")
    assert FakeTarget(not_migrating, tls=object()).resolve(RUN, "na") is None
    assert FakeTarget(migrating_vm(), tls=None).resolve(RUN, None) is not None  # plaintext: as before


def test_with_tls_files_a_handler_may_take_migrations_on_the_network(pki, monkeypatch):
    from corral.settings import HandlerSettings
    for name in list(os.environ):
        if name.startswith("CORRAL_"):
            monkeypatch.delenv(name)
    files = {"tls_ca_file": str(pki.ca.cert), "tls_cert_file": str(pki.nb.cert), "tls_key_file": str(pki.nb.key)}
    network = {"listen": "0.0.0.0:7101", "migration_listen": "0.0.0.0:7102"}
    assert HandlerSettings(**files, **network).plaintext_problems() == []
    problems = HandlerSettings(**network).plaintext_problems()
    assert any(p.startswith("migration_listen 0.0.0.0:7102 would serve plaintext") and "tls_cert_file" in p
               for p in problems), problems
    assert HandlerSettings(listen="127.0.0.1:0", migration_listen="127.0.0.1:0").plaintext_problems() == []


def test_a_link_planted_at_the_run_socket_is_not_followed(pki, short_dir):
    """The run's user owns its directory: a symlink at its libvirt socket's path (to a root
    daemon's socket, say) must not make root dial that; only a socket the run's uid owns."""
    root_daemon = LibvirtSocket(short_dir / "root-daemon-sock")  # owned by root
    planted = short_dir / "libvirt-sock"
    planted.symlink_to(root_daemon.path)
    run_uid = 231_000
    proxy = TargetProxy("127.0.0.1:0", lambda uid, node: RunSocket(str(planted), owner=run_uid),
                        tls=node_tls(pki, pki.nb))
    proxy.start()
    try:
        answer = attempt(proxy.port, client_context(pki, pki.na))
        assert answer == b"" or isinstance(answer, str), answer
        time.sleep(0.2)
        assert root_daemon.accepted == 0
        planted.unlink()
        own = LibvirtSocket(planted)  # the run's own socket: dialed
        os.chown(planted, run_uid, run_uid)
        assert attempt(proxy.port, client_context(pki, pki.na)) == b"REMOTE_PROCEDURE_CALL"
        assert own.accepted == 1 and root_daemon.accepted == 0
        own.close()
    finally:
        proxy.close()
        root_daemon.close()
