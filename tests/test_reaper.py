"""The launcher's reaper (launcher/reaper.py) on real processes: an orphaned grandchild is
reaped, a guest's QEMU at once, and a direct child waited for by its parent keeps its exit
status."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from launcher import reaper
from tests.cluster import REPO

SCRIPT = textwrap.dedent("""
    import os, subprocess, sys, time
    from launcher import reaper
    assert reaper.become_subreaper()
    def orphan(seconds):
        r, w = os.pipe()
        if os.fork() == 0:  # as libvirt starts QEMU: double fork, the middle one exits
            if os.fork() == 0:
                os.write(w, str(os.getpid()).encode()); os.execvp("sleep", ["sleep", str(seconds)])
            os._exit(0)
        os.wait()
        return int(os.read(r, 16))
    def state(pid):
        try:
            return open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0]
        except OSError:
            return "gone"
    plain, guest = orphan(0.1), orphan(0.1)
    reaper.guest_started(guest)
    time.sleep(0.5)
    early = (state(plain), state(guest))
    time.sleep(1.2)
    late = state(plain)
    status = subprocess.run(["sh", "-c", "sleep 0.2; exit 3"]).returncode
    print(early[0], early[1], late, status)
""")


def test_orphans_are_reaped_guests_at_once_and_waited_children_keep_their_status():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    plain_early, guest_early, plain_late, status = done.stdout.split()
    assert guest_early == "gone", "a guest's QEMU is reaped as soon as it exits"
    assert plain_early == "Z", "another exited child is left a moment to whoever waits for it"
    assert plain_late == "gone", "an orphan nobody waits for is reaped"
    assert status == "3", "a child its parent waits for keeps its exit status"


def test_to_reap_waits_for_orphans_but_not_for_guests():
    reaper._exited_since.clear()
    reaper._guests.clear()
    guest = os.getpid()  # a live process stands for a running QEMU
    reaper.guest_started(guest)
    gone = subprocess.Popen(["true"])
    gone.wait()
    reaper.guest_started(gone.pid)  # exited already: never recorded as a guest
    assert reaper._guests == {guest}
    assert reaper.to_reap([10, guest], now=100.0) == [guest]
    assert reaper.to_reap([10], now=100.0 + reaper.ORPHAN_AFTER_SECONDS - 0.1) == []
    assert reaper.to_reap([10], now=100.0 + reaper.ORPHAN_AFTER_SECONDS) == [10]
    assert reaper.to_reap([], now=200.0) == [] and not reaper._exited_since
