"""The migration proxy: how a source run's libvirt daemon reaches the target run's daemon on
another node (KubeVirt's handler does the same).

Target node: one TCP listener per handler (``migration_listen``). A connection opens with
one header line, ``corral-migration <instance uid>\\n``; the handler then connects to that
run's libvirt socket, only for a run this node is the migration target of right now
(``resolve`` says which socket, or None), and pipes bytes both ways.

Source node: per migration, a unix socket in the source run's directory (owned by the
run's user, mode 0600) that the source launcher's libvirt dials
(``qemu+unix:///session?socket=DIR/mig.sock``); each connection is forwarded to the target's
listener with the header.

With the node's TLS files (``MigrationTLS``) both ends speak mutual TLS: the target requires
a client certificate from the cluster CA naming a node and passes that node to ``resolve``,
which accepts only the source node of the migration the controller admitted for that run;
the source checks that the target's certificate names the target node
(``NAME.node.corral``, as controllers do). The header goes inside TLS. libvirt then tunnels
QEMU's memory stream over this same connection (VIR_MIGRATE_TUNNELLED, see
docs/migration-security.md), so nothing of the guest crosses the network in the clear.
Without TLS (loopback, or ``--insecure``) it is the plaintext proxy it always was and
QEMU's stream goes straight between the nodes (tcp://TARGET:PORT).

One thread per connection moves bytes both ways (non-blocking sockets and poll: an OpenSSL
connection must not be read and written by two threads at once). Plaintext half-closes are
passed on; TLS cannot half-close, so there the end of either direction ends the connection
once what was read is written. An error on either side closes both."""
from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from corral import tls as corral_tls
from corral.identity import identity_of, node_server_name
from handler.vm_files import open_launcher_socket

log = logging.getLogger(__name__)

HEADER = b"corral-migration "
CREDENTIALS_REQUEST = "credentials "
MAX_HEADER = 200
HEADER_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 10.0
CHUNK = 64 * 1024
#: Bytes read from one side and not yet written to the other before that side's reading pauses.
BUFFER_LIMIT = 1024 * 1024
#: How long a pipe's poll waits (a stopped pipe notices within this).
POLL_MS = 500
#: close() waits this long for connections still in their TLS handshake or header.
CLOSE_WAIT_SECONDS = 2.0
_WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError)


class Refused(OSError):
    """A connection the target proxy does not forward (who it is from, or for which run)."""


class Answered(Exception):
    """A connection the target proxy answered itself (a credentials request) and closed."""


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class MigrationTLS:
    """The node's TLS files as the proxy uses them: ``server`` for the target's listener
    (a client certificate signed by the CA is required) and ``client`` for the source's dial
    (the target's certificate must be the CA's and name the target node)."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    #: How QEMU's memory stream crosses (``migration_stream``); libvirt's connection stays in
    #: this proxy whatever it is. "tunnelled": inside it (VIR_MIGRATE_TUNNELLED; libvirt cannot
    #: tunnel post-copy). "tls": straight between the nodes in QEMU's own TLS with one-off
    #: credentials per migration (handler/migration_creds.py). "plaintext": straight and
    #: unencrypted, as without TLS files (the operator's opt-in for a trusted network).
    stream: str = "tunnelled"

    @property
    def tunnels_stream(self) -> bool:
        return self.stream == "tunnelled"

    @classmethod
    def from_files(cls, ca_file: str, cert_file: str, key_file: str, *,
                   stream: str = "tunnelled") -> "MigrationTLS":
        """Raises corral.tls.TLSConfigError naming what does not load."""
        for path, what in ((ca_file, "CA file"), (cert_file, "certificate file"), (key_file, "key file")):
            problem = corral_tls.file_problem(path, what)
            if problem:
                raise corral_tls.TLSConfigError(problem)
        try:
            server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server.verify_mode = ssl.CERT_REQUIRED
            client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
            for context in (server, client):
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                context.load_verify_locations(cafile=ca_file)
                context.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError) as exc:
            raise corral_tls.TLSConfigError(f"the migration proxy's TLS files (certificate {cert_file!r}, key "
                                            f"{key_file!r}, CA {ca_file!r}) do not load: {exc}") from exc
        return cls(server=server, client=client, stream=stream)


def peer_node(cert: dict) -> str:
    """The node a verified peer certificate names (CN ``node:NAME`` or SAN URI
    ``corral://node/NAME``), read by the same rules as gRPC callers (corral/identity.py);
    Refused for a user's certificate or one naming two nodes."""
    common_names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    sans = [value for kind, value in cert.get("subjectAltName", ()) if kind in ("URI", "DNS", "IP Address")]
    identity = identity_of({"transport_security_type": [b"ssl"],
                            "x509_common_name": [name.encode() for name in common_names],
                            "x509_subject_alternative_name": [san.encode() for san in sans]})
    if identity is None or identity.kind != "node":
        raise Refused(f"the client certificate is not a node's ({identity})")
    return identity.name


class Pipe:
    """Copies bytes both ways between two connected sockets (one thread, non-blocking, poll)
    until both directions end, or either fails."""

    def __init__(self, a: socket.socket, b: socket.socket, *, name: str, on_done: Callable[["Pipe"], None]) -> None:
        self.a, self.b = a, b
        self.name = name
        self.on_done = on_done
        self.lock = threading.Lock()
        self.closed = False

    def start(self) -> None:
        threading.Thread(target=self._run, name=f"mig-pipe-{self.name}", daemon=True).start()

    def _run(self) -> None:
        try:
            self._move()
        except OSError as exc:  # reset, broken pipe, a TLS alert: both sides go
            log.debug("%s: connection ended: %s", self.name, exc)
        finally:
            self.stop()
            for sock in (self.a, self.b):
                sock.close()
            self.on_done(self)

    def _move(self) -> None:
        a, b = self.a, self.b
        other = {a: b, b: a}
        outbox: dict[socket.socket, bytearray] = {a: bytearray(), b: bytearray()}  # to write to the key
        reading = {a: True, b: True}
        shut = {a: False, b: False}  # its write side half-closed
        over_tls = isinstance(a, ssl.SSLSocket) or isinstance(b, ssl.SSLSocket)
        for sock in (a, b):
            sock.setblocking(False)
        while not self.closed:
            for sock in (a, b):  # a direction ended and its bytes are written: pass the end on
                sink = other[sock]
                if not reading[sock] and not outbox[sink] and not shut[sink]:
                    if over_tls:
                        return  # TLS has no half-close: the connection ends
                    sink.shutdown(socket.SHUT_WR)
                    shut[sink] = True
            if all(shut.values()):
                return
            poller = select.poll()
            masks: dict[socket.socket, int] = {}
            buffered = False  # TLS bytes already decrypted: poll would not say so
            for sock in (a, b):
                mask = 0
                if reading[sock] and len(outbox[other[sock]]) < BUFFER_LIMIT:
                    mask |= select.POLLIN
                    buffered = buffered or (isinstance(sock, ssl.SSLSocket) and sock.pending() > 0)
                if outbox[sock]:
                    mask |= select.POLLOUT
                masks[sock] = mask
                if mask:
                    poller.register(sock, mask)
            if not any(masks.values()):
                return
            events = dict(poller.poll(0 if buffered else POLL_MS))
            for sock in (a, b):
                event = events.get(sock.fileno(), 0)
                if masks[sock] & select.POLLIN and (event or (isinstance(sock, ssl.SSLSocket) and sock.pending())):
                    self._read(sock, outbox[other[sock]], reading)
                if masks[sock] & select.POLLOUT and event & (select.POLLOUT | select.POLLERR | select.POLLHUP):
                    self._write(sock, outbox[sock])

    @staticmethod
    def _read(sock: socket.socket, into: bytearray, reading: dict[socket.socket, bool]) -> None:
        """As much as there is, up to BUFFER_LIMIT waiting (a TLS recv gives one record: one
        poll per 16 KiB would cost more than the copying)."""
        while len(into) < BUFFER_LIMIT:
            try:
                data = sock.recv(CHUNK)
            except _WOULD_BLOCK:
                return
            if not data:
                reading[sock] = False
                return
            into += data

    @staticmethod
    def _write(sock: socket.socket, outbox: bytearray) -> None:
        # At most CHUNK at a time: a TLS write that would block must be retried with at least
        # as many bytes, which holds since the outbox only grows until written.
        while outbox:
            try:
                sent = sock.send(outbox[:CHUNK])
            except _WOULD_BLOCK:
                return
            del outbox[:sent]

    def stop(self) -> None:
        """Wakes and ends the pipe's thread (which closes the sockets: never from here, a
        closed descriptor number may be reused while that thread polls it)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.a, self.b):
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the descriptor, under any TLS
            except OSError:
                pass


class _Listener:
    """A listening socket served by one accept thread; tracks its pipes to stop them all."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.pipes: set[Pipe] = set()
        self.opening: set[threading.Thread] = set()  # connections still being checked
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _accept_loop(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, address = self.sock.accept()
            except OSError:
                if self.stopped.is_set():
                    return
                continue
            opener = threading.Thread(target=self._serve_guarded, args=(conn, address), name=f"{self.name}-conn",
                                      daemon=True)
            with self.lock:  # started under the lock: close() joins only started threads
                self.opening.add(opener)
                opener.start()

    def _serve_guarded(self, conn: socket.socket, address: object) -> None:
        try:
            conn, other = self.open_peer(conn)
        except Answered:
            conn.close()
            return
        except Exception as exc:  # noqa: BLE001 - any trouble: drop this connection only
            log.warning("%s: connection from %s refused: %s", self.name, address or "a local process", exc)
            conn.close()
            return
        finally:
            with self.lock:
                self.opening.discard(threading.current_thread())
        pipe = Pipe(conn, other, name=self.name, on_done=self._forget)
        with self.lock:
            if self.stopped.is_set():
                conn.close()
                other.close()
                return
            self.pipes.add(pipe)
        pipe.start()

    def _forget(self, pipe: Pipe) -> None:
        with self.lock:
            self.pipes.discard(pipe)

    def open_peer(self, conn: socket.socket) -> tuple[socket.socket, socket.socket]:
        """The connection to use (``conn``, or it wrapped in TLS) and the other side; raises
        to refuse (closing what it opened, a wrapped ``conn`` included)."""
        raise NotImplementedError

    def close(self) -> None:
        self.stopped.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self.lock:
            pipes = list(self.pipes)
        for pipe in pipes:
            pipe.stop()
        deadline = time.monotonic() + CLOSE_WAIT_SECONDS  # let handshakes under way finish (and log)
        while time.monotonic() < deadline:
            with self.lock:  # again each time: the accept thread may have started one meanwhile
                opener = next(iter(self.opening), None)
            if opener is None:
                break
            opener.join(max(0.0, deadline - time.monotonic()))

    @property
    def connections(self) -> int:
        with self.lock:
            return len(self.pipes)


def read_header(conn: socket.socket) -> str:
    """The instance uid the header line names (read byte by byte: nothing after it is taken)."""
    kind, uid = read_request(conn)
    if kind != "libvirt":
        raise OSError(f"not a libvirt connection ({kind})")
    return uid


def read_request(conn: socket.socket) -> tuple[str, str]:
    """("libvirt", uid) for ``corral-migration UID``; ("credentials", uid) for
    ``corral-migration credentials UID`` (the source asking for its QEMU's one-off TLS files)."""
    conn.settimeout(HEADER_TIMEOUT_SECONDS)
    line = b""
    while not line.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte:
            raise OSError("closed before the header")
        line += byte
        if len(line) > MAX_HEADER:
            raise OSError("header too long")
    conn.settimeout(None)
    if not line.startswith(HEADER):
        raise OSError(f"bad header {line[:40]!r}")
    kind, uid = "libvirt", line[len(HEADER):].strip().decode("ascii", errors="replace")
    if uid.startswith(CREDENTIALS_REQUEST):
        kind, uid = "credentials", uid[len(CREDENTIALS_REQUEST):]
    if not uid or not all(c.isalnum() or c == "-" for c in uid):
        raise OSError(f"bad instance uid {uid!r}")
    return kind, uid


@dataclass(frozen=True)
class RunSocket:
    """A run's libvirt socket. With ``owner`` it lies in a directory the run's user owns, who
    could put a link there (to the node's system libvirtd, say): root then dials only a socket
    itself (not a link) owned by ``owner``, pinned while it connects."""
    path: str
    owner: int | None = None


#: ``resolve(instance_uid, source_node)``: the libvirt socket of a run this node receives now
#: from that node (None over plaintext: not checked), or None to refuse.
Resolver = Callable[[str, "str | None"], "str | RunSocket | None"]


def dial_run_socket(run: RunSocket) -> socket.socket:
    """A connection to the run's socket (see RunSocket); OSError when it cannot be had."""
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.settimeout(CONNECT_TIMEOUT_SECONDS)
    fds: tuple[int, ...] = ()
    try:
        if run.owner is None:
            peer.connect(run.path)
        else:
            fds = open_launcher_socket(Path(run.path), owner=run.owner)  # /dev/null unless the run's socket
            peer.connect(f"/proc/self/fd/{fds[0]}")
    except OSError:
        peer.close()
        raise
    finally:
        for fd in fds:
            if fd >= 0:
                os.close(fd)
    peer.settimeout(None)
    return peer


class TargetProxy(_Listener):
    """TCP listener of the target node. With ``tls``: mutual TLS, and the client
    certificate's node is what ``resolve`` checks against the migration's source."""

    def __init__(self, listen: str, resolve: Resolver, tls: MigrationTLS | None = None,
                 credentials: Callable[[str, str], bytes | None] | None = None) -> None:
        host, port = split_host_port(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        super().__init__(sock, "mig-proxy")
        self.resolve = resolve
        self.tls = tls
        #: ``credentials(uid, source_node)``: the client half of the run's one-off TLS files for
        #: QEMU (handler/migration_creds.py), only for the source node of its migration; None: refused.
        self.credentials = credentials
        self.port = sock.getsockname()[1]

    def open_peer(self, conn: socket.socket) -> tuple[socket.socket, socket.socket]:
        conn.settimeout(HEADER_TIMEOUT_SECONDS)  # the handshake and the header, both bounded
        source_node: str | None = None
        if self.tls is not None:
            conn = self.tls.server.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        try:
            if isinstance(conn, ssl.SSLSocket):
                conn.do_handshake()  # no client certificate, or not the CA's: ssl.SSLError
                source_node = peer_node(conn.getpeercert())
            kind, uid = read_request(conn)
            if kind == "credentials":
                answer = (self.credentials(uid, source_node)
                          if self.credentials is not None and source_node is not None else None)
                if answer is None:
                    raise Refused(f"no TLS files of run {uid} for "
                                  + (f"node {source_node}" if source_node else "a plaintext client"))
                conn.sendall(answer)
                log.info("migration proxy: run %s: its migration's TLS files sent to node %s", uid, source_node)
                raise Answered()
            run = self.resolve(uid, source_node)
            if run is None:
                raise Refused(f"run {uid} is not migrating to this node"
                              + (f" from node {source_node}" if source_node is not None else ""))
            run = RunSocket(run) if isinstance(run, str) else run
            peer = dial_run_socket(run)
        except BaseException:
            conn.close()
            raise
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.info("migration proxy: connection for run %s%s to %s", uid,
                 f" from node {source_node} (mutual TLS)" if source_node else " (plaintext)", run.path)
        return conn, peer


class SourceTunnel(_Listener):
    """A unix socket at ``path`` (owned by ``owner`` uid/gid, 0600) forwarding each
    connection to the target node's proxy, announcing ``instance_uid``; with ``tls`` over
    mutual TLS, accepting only a certificate that names ``target_node``."""

    def __init__(self, path: Path, *, target_address: str, instance_uid: str,
                 owner: tuple[int, int] | None = None, tls: MigrationTLS | None = None,
                 target_node: str = "") -> None:
        if tls is not None and not target_node:
            raise ValueError("a TLS tunnel must know the target node's name")
        try:
            os.unlink(path)  # left by an earlier handler
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is made 0600: no chmod (a path the run's user
        try:                         # can replace meanwhile must never be chmodded by root)
            sock.bind(str(path))
            if owner is not None:
                os.chown(path, *owner, follow_symlinks=False)
            sock.listen(8)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        super().__init__(sock, f"mig-tunnel-{instance_uid[:8]}")
        self.path = path
        self.target_address = target_address
        self.instance_uid = instance_uid
        self.tls = tls
        self.target_node = target_node

    def open_peer(self, conn: socket.socket) -> tuple[socket.socket, socket.socket]:
        host, port = split_host_port(self.target_address)
        peer = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            if self.tls is not None:  # handshake now: the target's certificate is checked here
                peer = self.tls.client.wrap_socket(peer, server_hostname=node_server_name(self.target_node))
            peer.sendall(HEADER + self.instance_uid.encode() + b"\n")
        except BaseException:
            peer.close()
            raise
        peer.settimeout(None)
        peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, peer

    def close(self) -> None:
        super().close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
