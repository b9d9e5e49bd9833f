"""systemd's notify protocol (sd_notify(3)), without a dependency: one datagram per message
on the unix socket named by $NOTIFY_SOCKET (a path, or '@name' for an abstract socket).

Outside systemd (no NOTIFY_SOCKET) every call is a cheap no-op, so the daemons call it
unconditionally:

    notify("READY=1\\nSTATUS=serving on 127.0.0.1:7100")
    watchdog = Watchdog()
    while not stop.wait(watchdog.period):
        watchdog.ping(healthy=...)
    notify("STOPPING=1")
"""
from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("corral.sdnotify")

#: How often the main loop wakes up when no watchdog is configured (it only checks `stop`).
IDLE_PERIOD = 5.0


def _address(value: str) -> str | bytes:
    # '@name' is an abstract socket: its address starts with a NUL byte.
    return b"\0" + value[1:].encode() if value.startswith("@") else value


def notify(state: str) -> bool:
    """Sends state ('READY=1', 'WATCHDOG=1', 'STOPPING=1', 'STATUS=...', several joined by
    newlines) to the service manager. True when it was sent, False when there is no
    NOTIFY_SOCKET or sending failed (which is logged, never raised: a daemon must not die
    because its supervisor went away)."""
    target = os.environ.get("NOTIFY_SOCKET", "")
    if not target:
        return False
    if not (target.startswith("/") or target.startswith("@")):
        log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract socket: ignored", target)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(target))
            sock.sendall(state.encode())
        return True
    except OSError as exc:
        log.warning("cannot notify the service manager (%s): %s", target, exc)
        return False


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds systemd gave this process (WatchdogSec=), or None when
    there is none or it is meant for another process (WATCHDOG_PID names a different pid)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


class Watchdog:
    """Pings systemd's watchdog from a daemon's main loop.

    `period` is how long the loop may sleep between `ping` calls: half the watchdog
    timeout (as sd_watchdog_enabled(3) advises), or IDLE_PERIOD without a watchdog. `ping`
    sends WATCHDOG=1 only when the caller says it is healthy, so a stuck or broken daemon
    is restarted by systemd (Restart= with WatchdogSec=)."""

    def __init__(self, interval: float | None = None) -> None:
        self.interval = watchdog_interval() if interval is None else interval
        self.period = min(IDLE_PERIOD, self.interval / 2) if self.interval else IDLE_PERIOD
        self.last_ping = 0.0
        self.last_status = ""

    @property
    def enabled(self) -> bool:
        return bool(self.interval)

    def ping(self, *, healthy: bool = True, status: str = "") -> bool:
        """WATCHDOG=1 (with STATUS= when it changed) if healthy and a watchdog is on; a
        changed status is sent even when unhealthy, so `systemctl status` says why."""
        lines = []
        if status and status != self.last_status:
            lines.append(f"STATUS={status}")
            self.last_status = status
        if healthy and self.enabled:
            lines.append("WATCHDOG=1")
            self.last_ping = time.monotonic()
        return notify("\n".join(lines)) if lines else False
