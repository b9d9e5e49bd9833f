"""Session mode: the run's own ``libvirtd`` + ``virtlogd`` (``qemu:///session``), as the VM user.

Why: an embedded driver (``qemu:///embed``) has no daemon, so it cannot be a live-migration
peer. A per-run session daemon can (KubeVirt's non-root virt-launcher model), at a cost of
roughly 10-13 MB PSS for libvirtd and 3-4 MB for virtlogd per VM (measured in the migration
spike; see README.md, "Launchers and libvirt mode").

Layout, all below the VM directory DIR (0700, owned by the VM user): HOME=DIR,
XDG_RUNTIME_DIR=DIR/run (sockets and pid files: DIR/run/libvirt/libvirt-sock,
DIR/run/libvirt/libvirtd.pid, DIR/run/libvirt/virtlogd.pid), DIR/.config/libvirt (domain
XML, QEMU monitor sockets), DIR/.cache/libvirt (qemu/cache/capabilities, logs).

libvirt's daemons resolve every client's uid to a name (root's too: the handler's migration
proxy connects as root), and the VM users have no /etc/passwd entries, so the daemons run
with nss_wrapper (DIR/passwd, DIR/group). That is also why the launcher starts them itself:
libvirt's own autostart passes only a whitelisted environment (no NSS_WRAPPER_*). They run
WITHOUT --timeout: an idle migration target must not lose its daemon before the guest comes.
They outlive a killed launcher (they daemonize); the next launcher just reconnects. When the
run ends the launcher stops them (``stop_daemons``); pid files let the handler do it too.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time

import libvirt

from launcher import privileges
from launcher.host import save_capabilities_dir, seed_capabilities_dir

log = logging.getLogger(__name__)

NSS_WRAPPER = "libnss_wrapper.so"
PASSWD_FILE = "passwd"
GROUP_FILE = "group"
#: Daemon executables, in start order (virtlogd first: libvirtd hands it QEMU's output).
DAEMONS = ("virtlogd", "libvirtd")
START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 3.0


def runtime_dir(vm_dir: str) -> str:
    return os.path.join(vm_dir, "run")


def libvirt_dir(vm_dir: str) -> str:
    return os.path.join(runtime_dir(vm_dir), "libvirt")


def libvirt_socket(vm_dir: str) -> str:
    """The session daemon's socket (what a migration source's daemon reaches, via proxies)."""
    return os.path.join(libvirt_dir(vm_dir), "libvirt-sock")


def virtlogd_socket(vm_dir: str) -> str:
    return os.path.join(libvirt_dir(vm_dir), "virtlogd-sock")


def pid_files(vm_dir: str) -> list[str]:
    """Pid files of the run's daemons (written by the daemons themselves)."""
    return [os.path.join(libvirt_dir(vm_dir), f"{name}.pid") for name in DAEMONS]


def uri(vm_dir: str) -> str:
    """``qemu:///session`` with the socket spelt out: never autostarts a daemon without nss_wrapper."""
    return f"qemu+unix:///session?socket={libvirt_socket(vm_dir)}"


def capabilities_dir(vm_dir: str) -> str:
    return os.path.join(vm_dir, ".cache", "libvirt", "qemu", "cache", "capabilities")


def environment(vm_dir: str) -> dict[str, str]:
    """The daemons' whole environment (nothing inherited from root or the handler)."""
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": vm_dir,
        "XDG_RUNTIME_DIR": runtime_dir(vm_dir),
        "LD_PRELOAD": NSS_WRAPPER,
        "NSS_WRAPPER_PASSWD": os.path.join(vm_dir, PASSWD_FILE),
        "NSS_WRAPPER_GROUP": os.path.join(vm_dir, GROUP_FILE),
        "LANG": "C",
    }


def prepare(vm_dir: str) -> None:
    """Set this process's own libvirt environment and write the nss_wrapper files.

    Runs as the VM user (after privileges.drop_to_owner). LIBVIRT_AUTOSTART=0: a client in
    this process must never spawn a daemon behind our back (it would lack nss_wrapper).
    """
    os.makedirs(runtime_dir(vm_dir), mode=0o700, exist_ok=True)
    os.chmod(runtime_dir(vm_dir), 0o700)
    os.environ["HOME"] = vm_dir
    os.environ["XDG_RUNTIME_DIR"] = runtime_dir(vm_dir)
    os.environ["LIBVIRT_AUTOSTART"] = "0"
    uid, gid = os.getuid(), os.getgid()
    users = {0: ("root", 0, "/root")}
    users.setdefault(uid, (f"vm{uid}", gid, vm_dir))
    groups = {0: "root", gid: f"vm{gid}" if gid else "root"}
    _write(os.path.join(vm_dir, PASSWD_FILE),
           "".join(f"{name}:x:{u}:{g}:corral:{home}:/bin/false\n" for u, (name, g, home) in users.items()))
    _write(os.path.join(vm_dir, GROUP_FILE), "".join(f"{name}:x:{g}:\n" for g, name in groups.items()))


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def answers(path: str) -> bool:
    """True when a daemon accepts connections on the unix socket ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def seed_capabilities(vm_dir: str, cache_dir: str | None) -> None:
    """Copy the node's QEMU capabilities cache into the session daemon's (saves ~4 s)."""
    if not cache_dir:
        return
    try:
        n = seed_capabilities_dir(capabilities_dir(vm_dir), cache_dir)
        log.info("seeded %d capabilities file(s) from %s", n, cache_dir)
    except OSError as e:
        log.warning("cannot seed capabilities cache: %s", e)


def start_daemons(vm_dir: str) -> bool:
    """Start virtlogd and libvirtd unless their sockets answer; True if any was started.

    A restarted launcher finds them running (with its guest) and just reconnects.
    """
    started = False
    env = environment(vm_dir)
    for name, sock in (("virtlogd", virtlogd_socket(vm_dir)), ("libvirtd", libvirt_socket(vm_dir))):
        if answers(sock):
            continue
        t0 = time.monotonic()
        # --daemon: forks, the child detaches; the parent exits once the child is set up.
        result = subprocess.run([name, "--daemon"], env=env, cwd=vm_dir, stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=START_TIMEOUT_SECONDS)
        if result.returncode != 0:
            raise OSError(f"{name} --daemon failed ({result.returncode}): "
                          f"{result.stderr.decode(errors='replace').strip()[-300:]}")
        deadline = t0 + START_TIMEOUT_SECONDS
        while not answers(sock):
            if time.monotonic() > deadline:
                raise OSError(f"{name} did not open {sock} within {START_TIMEOUT_SECONDS:.0f}s")
            time.sleep(0.02)
        log.info("started %s in %.2fs", name, time.monotonic() - t0)
        started = True
    return started


def _daemon_pid(path: str) -> int:
    """The pid in ``path`` if it is a live libvirt daemon of ours, else 0."""
    try:
        with open(path) as f:
            pid = int(f.read().strip() or 0)
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return 0
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return 0
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = os.path.basename(f.read().split(b"\0")[0]).decode(errors="replace")
    except (OSError, ValueError, IndexError):
        return 0
    return pid if argv0 in DAEMONS else 0


def stop_daemons(vm_dir: str) -> None:
    """SIGTERM libvirtd, then virtlogd; SIGKILL what is still there after a moment."""
    for path in reversed(pid_files(vm_dir)):
        pid = _daemon_pid(path)
        if not pid:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            continue
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while _daemon_pid(path) == pid and time.monotonic() < deadline:
            time.sleep(0.05)
        if _daemon_pid(path) == pid:
            log.warning("%s (pid %d) ignored SIGTERM: killing it", os.path.basename(path), pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        log.info("stopped %s (pid %d)", os.path.basename(path)[:-4], pid)


def qemu_pid_dir(vm_dir: str) -> str:
    """Where the session daemon keeps QEMU's NAME.pid."""
    return os.path.join(libvirt_dir(vm_dir), "qemu", "run")


#: Who probes QEMU for the node's cache in session mode when the handler (root) asks.
WARM_UID = 65534  # nobody: only its own scratch directory is touched


def _probe(scratch: str) -> None:
    """In a scratch session daemon: every emulator's capabilities (what a first defineXML asks)."""
    prepare(scratch)
    try:
        start_daemons(scratch)
        conn = libvirt.open(uri(scratch))
        conn.getCapabilities()
        conn.getDomainCapabilities(None, os.uname().machine, None, "qemu")
        conn.close()
    finally:
        stop_daemons(scratch)


def warm_capabilities(scratch: str, cache_dir: str) -> int:
    """Fill the node's cache as a session daemon sees it; returns the files updated.

    A cache probed by the embedded driver does not serve a session daemon (libvirt compares
    the prober's own ctime: libvirt.so's vs libvirtd's) and vice versa, so a node in session
    mode warms its cache this way. As root: probes as WARM_UID in scratch/session, then copies.
    """
    work = os.path.join(scratch, "session")
    if os.path.isdir(work):
        shutil.rmtree(work)
    os.makedirs(work, mode=0o700)
    seed_capabilities_dir(capabilities_dir(work), cache_dir)
    if os.geteuid() != 0:
        _probe(work)
    else:
        for root, dirs, files in os.walk(work):
            for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
                os.chown(name, WARM_UID, WARM_UID, follow_symlinks=False)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                privileges.drop_to_owner(work)
                _probe(work)
                code = 0
            except BaseException:  # the parent reports the exit status
                log.exception("probing QEMU in a session daemon failed")
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise OSError("probing QEMU in a session daemon failed")
    return save_capabilities_dir(capabilities_dir(work), cache_dir)
