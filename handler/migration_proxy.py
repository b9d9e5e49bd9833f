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

Only libvirt's control connection goes through here; QEMU's memory stream goes straight
between the nodes (tcp://TARGET:PORT). Plain threads: two per connection. Half-closes are
passed on; an error on either side closes both."""
from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

HEADER = b"corral-migration "
MAX_HEADER = 200
HEADER_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 10.0
CHUNK = 64 * 1024


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Pipe:
    """Copies bytes both ways between two connected sockets until both directions end."""

    def __init__(self, a: socket.socket, b: socket.socket, *, name: str, on_done: Callable[["Pipe"], None]) -> None:
        self.a, self.b = a, b
        self.name = name
        self.on_done = on_done
        self.lock = threading.Lock()
        self.open_directions = 2
        self.closed = False

    def start(self) -> None:
        for source, sink, tag in ((self.a, self.b, ">"), (self.b, self.a, "<")):
            threading.Thread(target=self._copy, args=(source, sink), name=f"mig-pipe{tag}{self.name}",
                             daemon=True).start()

    def _copy(self, source: socket.socket, sink: socket.socket) -> None:
        failed = False
        try:
            while True:
                data = source.recv(CHUNK)
                if not data:
                    break
                sink.sendall(data)
            try:
                sink.shutdown(socket.SHUT_WR)  # pass the half-close on
            except OSError:
                pass
        except OSError:
            failed = True
        with self.lock:
            self.open_directions -= 1
            finished = failed or self.open_directions == 0
        if finished:
            self.close()

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.a, self.b):
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the other direction's recv
            except OSError:
                pass
            sock.close()
        self.on_done(self)


class _Listener:
    """A listening socket served by one accept thread; tracks its pipes to close them all."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.pipes: set[Pipe] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _accept_loop(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self.stopped.is_set():
                    return
                continue
            threading.Thread(target=self._serve_guarded, args=(conn,), name=f"{self.name}-conn",
                             daemon=True).start()

    def _serve_guarded(self, conn: socket.socket) -> None:
        try:
            other = self.open_peer(conn)
        except Exception as exc:  # noqa: BLE001 - any trouble: drop this connection only
            log.warning("%s: connection refused: %s", self.name, exc)
            conn.close()
            return
        if other is None:
            conn.close()
            return
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

    def open_peer(self, conn: socket.socket) -> socket.socket | None:
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
            pipe.close()

    @property
    def connections(self) -> int:
        with self.lock:
            return len(self.pipes)


def read_header(conn: socket.socket) -> str:
    """The instance uid the header line names (read byte by byte: nothing after it is taken)."""
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
    uid = line[len(HEADER):].strip().decode("ascii", errors="replace")
    if not uid or not all(c.isalnum() or c == "-" for c in uid):
        raise OSError(f"bad instance uid {uid!r}")
    return uid


class TargetProxy(_Listener):
    """TCP listener of the target node; ``resolve(instance_uid)`` gives the libvirt socket of
    a run this node currently receives, or None (the connection is then refused)."""

    def __init__(self, listen: str, resolve: Callable[[str], str | None]) -> None:
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
        self.port = sock.getsockname()[1]

    def open_peer(self, conn: socket.socket) -> socket.socket | None:
        uid = read_header(conn)
        path = self.resolve(uid)
        if path is None:
            log.warning("migration proxy: run %s is not migrating to this node: refused", uid)
            return None
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer.settimeout(CONNECT_TIMEOUT_SECONDS)
        try:
            peer.connect(path)
        except OSError:
            peer.close()
            raise
        peer.settimeout(None)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.info("migration proxy: connection for run %s to %s", uid, path)
        return peer


class SourceTunnel(_Listener):
    """A unix socket at ``path`` (owned by ``owner`` uid/gid, 0600) forwarding each
    connection to the target node's proxy, announcing ``instance_uid``."""

    def __init__(self, path: Path, *, target_address: str, instance_uid: str,
                 owner: tuple[int, int] | None = None) -> None:
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

    def open_peer(self, conn: socket.socket) -> socket.socket | None:
        host, port = split_host_port(self.target_address)
        peer = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            peer.sendall(HEADER + self.instance_uid.encode() + b"\n")
        except OSError:
            peer.close()
            raise
        peer.settimeout(None)
        peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return peer

    def close(self) -> None:
        super().close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
