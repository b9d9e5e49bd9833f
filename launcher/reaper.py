"""The launcher reaps its own QEMU.

libvirt starts QEMU daemonized, so QEMU's parent would be the node's init. libvirt then waits
for a stopped QEMU to vanish from the process table (it polls ``kill(pid, 0)``, which a zombie
still answers), and an init that reaps orphans late (a container's, or these test machines':
1-2 s) makes every destroy, crash and capability probe that much slower. A launcher that is a
child subreaper gets its QEMU (and probes, and session-mode daemons) as children instead, and
reaps them itself.

What it reaps, one pid at a time (never ``waitpid(-1)``, which would take exit statuses that
libvirt and Python's subprocess wait for themselves):
- the guest's QEMU (``guest_started(pid)``: libvirt starts it double-forked, so it is always an
  orphan), as soon as it exits;
- any other child that has stayed exited for ORPHAN_AFTER_SECONDS: libvirt and subprocess
  wait for their own children the moment they exit (they are already blocked in waitpid), so
  a zombie that old is an orphan nobody else will reap.
A launcher that adopts a running guest after a restart is not its parent; then nothing changes.
"""
from __future__ import annotations

import ctypes
import glob
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
POLL_SECONDS = 0.05
ORPHAN_AFTER_SECONDS = 1.0

_guests: set[int] = set()
_exited_since: dict[int, float] = {}


def become_subreaper() -> bool:
    """Make orphaned descendants this process's children and start the thread reaping them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("cannot become a child subreaper (errno %d): QEMU is reaped by init", ctypes.get_errno())
        return False
    threading.Thread(target=_reap_forever, name="reaper", daemon=True).start()
    return True


def guest_started(pid: int) -> None:
    """``pid`` is a guest's QEMU: reap it the moment it exits. A pid already exited is not
    recorded (libvirt may name a QEMU it has just lost: its pid must not be reaped at once if
    it is ever reused)."""
    if pid > 0 and pid not in _guests and _state(pid) not in ("Z", ""):
        _guests.add(pid)


def _state(pid: int) -> str:
    """The process's state letter (R, S, Z, ...), "" when there is none."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return ""


def exited_children() -> list[int]:
    """This process's children that have exited (zombies)."""
    found = []
    for path in glob.glob("/proc/self/task/*/children"):
        try:
            with open(path) as handle:
                pids = [int(pid) for pid in handle.read().split()]
        except OSError:
            continue
        found.extend(pid for pid in pids if _state(pid) == "Z")
    return found


def to_reap(exited: list[int], now: float) -> list[int]:
    """Which exited children to reap now (and forget the ones gone meanwhile)."""
    for pid in list(_exited_since):
        if pid not in exited:
            del _exited_since[pid]
    ready = []
    for pid in exited:
        since = _exited_since.setdefault(pid, now)
        if pid in _guests or now - since >= ORPHAN_AFTER_SECONDS:
            ready.append(pid)
    return ready


def _reap_forever() -> None:
    while True:
        time.sleep(POLL_SECONDS)
        for pid in to_reap(exited_children(), time.monotonic()):
            _guests.discard(pid)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
