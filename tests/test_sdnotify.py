"""systemd's notify protocol: corral.sdnotify on its own, then both daemons run with
NOTIFY_SOCKET pointing at a datagram socket this test owns (what systemd does for Type=notify),
asserting READY=1, WATCHDOG=1 and, after SIGTERM, STOPPING=1."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from corral import sdnotify
from tests.cluster import REPO, free_port, pids_mentioning, wait_for


class NotifyListener:
    """The service manager's end: a unix datagram socket collecting messages."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.messages: list[str] = []

    def receive_until(self, line: str, *, timeout: float, count: int = 1) -> list[str]:
        """Every message received so far, once `count` of them have `line` among their lines."""
        deadline = time.monotonic() + timeout
        while sum(line in message.splitlines() for message in self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"not {count} {line!r} within {timeout}s; received {self.messages!r}")
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                pass
        return self.messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_dir():
    # unix socket paths are limited to 108 bytes: pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="corral-n-", dir="/tmp"))
    yield path
    for pid in pids_mentioning(str(path)):  # a spare launcher the handler left, if any
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(path, ignore_errors=True)


# -- the module ---------------------------------------------------------------------------------

def test_notify_without_a_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


def test_notify_sends_to_a_path_socket(monkeypatch, short_dir):
    listener = NotifyListener(str(short_dir / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "notify"))
    try:
        assert sdnotify.notify("READY=1\nSTATUS=up")
        assert listener.receive_until("READY=1", timeout=2) == ["READY=1\nSTATUS=up"]
    finally:
        listener.close()


def test_notify_sends_to_an_abstract_socket(monkeypatch):
    name = f"corral-test-{uuid.uuid4().hex[:8]}"
    listener = NotifyListener(b"\0" + name.encode())
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        assert sdnotify.notify("WATCHDOG=1")
        listener.receive_until("WATCHDOG=1", timeout=2)
    finally:
        listener.close()


def test_notify_to_a_missing_socket_fails_quietly(monkeypatch, short_dir):
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "nobody-listens"))
    assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize("usec,pid,expected", [
    ("", "", None),
    ("500000", "", 0.5),
    ("500000", "self", 0.5),
    ("500000", "1", None),          # meant for another process
    ("0", "", None),
    ("soon", "", None),
])
def test_watchdog_interval(monkeypatch, usec, pid, expected):
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert sdnotify.watchdog_interval() == expected


def test_watchdog_pings_only_when_healthy(monkeypatch, short_dir):
    listener = NotifyListener(str(short_dir / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "notify"))
    try:
        watchdog = sdnotify.Watchdog(interval=2.0)
        assert watchdog.period == 1.0
        assert watchdog.ping(healthy=False, status="broken")
        assert not watchdog.ping(healthy=False, status="broken")  # nothing new to say
        assert watchdog.ping(healthy=True, status="fine")
        listener.receive_until("WATCHDOG=1", timeout=2)
        assert listener.messages == ["STATUS=broken", "STATUS=fine\nWATCHDOG=1"]
        assert sdnotify.Watchdog(interval=0).period == sdnotify.IDLE_PERIOD
    finally:
        listener.close()


# -- the daemons --------------------------------------------------------------------------------

def start_daemon(module: str, args: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen:
    # Through sh so WATCHDOG_PID can name the daemon's own pid, as systemd sets it (exec keeps it).
    with open(log, "ab") as out:
        return subprocess.Popen(
            ["/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh", sys.executable, "-m", module, *args],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def daemon_env(etcd, notify_socket: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CORRAL_", "WATCHDOG_"))}
    env.update(PYTHONPATH=str(REPO), CORRAL_ETCD_ENDPOINTS=etcd.endpoint,
               CORRAL_ETCD_PREFIX=f"/n-{uuid.uuid4().hex[:8]}/", NOTIFY_SOCKET=str(notify_socket),
               WATCHDOG_USEC="500000")
    return env


def stop_and_expect_stopping(process: subprocess.Popen, listener: NotifyListener, log: Path) -> None:
    listener.messages.clear()
    process.send_signal(signal.SIGTERM)
    try:
        try:
            listener.receive_until("STOPPING=1", timeout=20)
        except AssertionError as exc:  # say what the daemon was doing (it failed once under CI load)
            raise AssertionError(f"{exc}; exit status {process.poll()}; log:\n{log.read_text()[-3000:]}") from None
        assert process.wait(timeout=15) == 0, log.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def assert_ready_then_watchdog(listener: NotifyListener, process: subprocess.Popen, log: Path) -> None:
    try:
        messages = listener.receive_until("READY=1", timeout=30)
    except AssertionError:
        raise AssertionError(f"{log.read_text()[-3000:]}") from None
    assert all("WATCHDOG=1" not in m.splitlines() for m in messages), "WATCHDOG=1 before READY=1"
    listener.messages.clear()
    # WatchdogSec=0.5 s: pings come every 0.25 s, so three within 3 s even on a busy machine.
    listener.receive_until("WATCHDOG=1", timeout=3, count=3)
    assert process.poll() is None


def test_controller_notifies_ready_watchdog_and_stopping(etcd, short_dir):
    listener = NotifyListener(str(short_dir / "notify"))
    log = short_dir / "controller.log"
    process = start_daemon("controller.main", ["--listen", f"127.0.0.1:{free_port()}"],
                           env=daemon_env(etcd, short_dir / "notify"), log=log)
    try:
        assert_ready_then_watchdog(listener, process, log)
        assert any(m.startswith("STATUS=serving the API") for m in "\n".join(listener.messages).splitlines())
        stop_and_expect_stopping(process, listener, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        listener.close()


def test_handler_notifies_ready_watchdog_and_stopping(etcd, short_dir):
    listener = NotifyListener(str(short_dir / "notify"))
    env = daemon_env(etcd, short_dir / "notify")
    address = f"127.0.0.1:{free_port()}"
    controller_env = {k: v for k, v in env.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    controller = start_daemon("controller.main", ["--listen", address], env=controller_env,
                              log=short_dir / "controller.log")
    log = short_dir / "handler.log"
    handler = None
    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=0.5),
                 timeout=20, what="the controller to listen")
        handler = start_daemon("handler.main", ["--node-name", "n1", "--servers", address,
                                                "--state-dir", str(short_dir / "s"), "--emulation", "on",
                                                "--listen", "127.0.0.1:0", "--migration-listen", "127.0.0.1:0"],
                               env=env, log=log)
        assert_ready_then_watchdog(listener, handler, log)
        assert "STATUS=node n1: running" in "\n".join(listener.messages).splitlines()
        stop_and_expect_stopping(handler, listener, log)
    finally:
        for process in (handler, controller):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        listener.close()
