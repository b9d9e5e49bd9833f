"""libvirt access, split as in Nova's nova/virt/libvirt/{host,guest}.py.

``Host`` owns the connection and the event loop; ``Guest`` wraps one domain. libvirt
errors are turned into the few typed exceptions below, so callers decide on meaning
(not found, not running, cannot start) instead of on libvirt error numbers.
"""

from __future__ import annotations

import glob
import logging
import os
import tempfile
import urllib.parse
from dataclasses import dataclass
from typing import Callable

import libvirt

from corral.v1 import launcher_pb2
from launcher.event_loop import EventLoop

log = logging.getLogger(__name__)

DomainState = int  # a launcher_pb2.DomainState value


class LauncherError(Exception):
    """Base of the launcher's libvirt errors."""


class HypervisorUnavailable(LauncherError):
    """The libvirt connection could not be opened or was lost."""


class DomainNotFound(LauncherError):
    """No domain with that uuid or name is defined."""


class DomainNotRunning(LauncherError):
    """The operation needs a running domain and it is not running."""


class DomainStartFailed(LauncherError):
    """libvirt or QEMU refused to define or start the domain (bad config, missing file...)."""


class DomainOperationFailed(LauncherError):
    """Any other libvirt failure."""


_NOT_FOUND = {libvirt.VIR_ERR_NO_DOMAIN}
_NOT_RUNNING = {libvirt.VIR_ERR_OPERATION_INVALID}
_UNAVAILABLE = {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_SYSTEM_ERROR}


def classify(error: libvirt.libvirtError, *, starting: bool = False) -> LauncherError:
    """Map a libvirtError to a typed exception; ``starting`` makes failures DomainStartFailed."""
    code = error.get_error_code()
    message = error.get_error_message() or str(error)
    if code in _NOT_FOUND:
        return DomainNotFound(message)
    if starting:
        return DomainStartFailed(message)
    if code in _NOT_RUNNING:
        return DomainNotRunning(message)
    if code in _UNAVAILABLE:
        return HypervisorUnavailable(message)
    return DomainOperationFailed(message)


# libvirt (state, reason) -> (DomainState, reason string). Reason names follow virsh.
_REASONS: dict[int, list[str]] = {
    libvirt.VIR_DOMAIN_RUNNING: ["unknown", "booted", "migrated", "restored", "from-snapshot",
                                 "unpaused", "migration-canceled", "save-canceled", "wakeup",
                                 "crashed", "post-copy", "post-copy-failed"],
    libvirt.VIR_DOMAIN_PAUSED: ["unknown", "user", "migration", "save", "dump", "ioerror",
                                "watchdog", "from-snapshot", "shutdown", "snapshot", "crashed",
                                "starting-up", "post-copy", "post-copy-failed", "api-error"],
    libvirt.VIR_DOMAIN_SHUTDOWN: ["unknown", "user"],
    libvirt.VIR_DOMAIN_SHUTOFF: ["unknown", "shutdown", "destroyed", "crashed", "migrated",
                                 "saved", "failed", "from-snapshot", "daemon"],
    libvirt.VIR_DOMAIN_CRASHED: ["unknown", "panicked"],
    libvirt.VIR_DOMAIN_PMSUSPENDED: ["unknown"],
}
# Shut off without anyone asking: QEMU died ("crashed"), failed to start, or libvirt found
# it gone while reconnecting after a launcher restart ("daemon").
_CRASHED_SHUTOFF = {"crashed", "failed", "daemon"}


def translate_state(state: int, reason: int) -> tuple[DomainState, str]:
    """Turn libvirt's (state, reason) into Corral's DomainState and a reason string."""
    names = _REASONS.get(state, [])
    reason_name = names[reason] if 0 <= reason < len(names) else f"reason-{reason}"
    pb = launcher_pb2
    if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
        return pb.DOMAIN_STATE_RUNNING, reason_name if state == libvirt.VIR_DOMAIN_RUNNING else "blocked"
    if state in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED):
        return pb.DOMAIN_STATE_PAUSED, reason_name
    if state == libvirt.VIR_DOMAIN_SHUTDOWN:
        return pb.DOMAIN_STATE_SHUTTING_DOWN, reason_name
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        if reason_name in _CRASHED_SHUTOFF:
            return pb.DOMAIN_STATE_CRASHED, reason_name
        return pb.DOMAIN_STATE_SHUTOFF, reason_name
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return pb.DOMAIN_STATE_CRASHED, reason_name
    return pb.DOMAIN_STATE_STARTING, reason_name  # VIR_DOMAIN_NOSTATE


def embed_root(uri: str) -> str | None:
    """The state directory of a ``qemu:///embed?root=DIR`` URI, else None."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme != "qemu" or parsed.path != "/embed":
        return None
    roots = urllib.parse.parse_qs(parsed.query).get("root")
    return roots[0] if roots else None


def embed_qemu_conf(*, as_root: bool) -> str:
    """qemu.conf of an embedded driver. It logs to files instead of a system virtlogd and never
    changes a file's owner (dynamic_ownership = 0): the handler hands QEMU what it needs.
    A launcher running as a VM's user (isolation) runs QEMU as that user, who owns the run's
    files. A launcher running as root (isolation off) would otherwise run QEMU as libvirt's
    qemu user and chown every disk, kernel and image the VM names to it (and to root:root
    afterwards); with dynamic ownership off libvirt cannot even hand that user its own
    per-domain files, so QEMU runs as root, like the launcher: without isolation there is no
    privilege separation between a VM and its node (use isolation)."""
    lines = ['stdio_handler = "file"',
             # Many VMs share kernels and images: never record and "restore" their ownership.
             "remember_owner = 0",
             "dynamic_ownership = 0"]
    if as_root:
        lines += ['user = "root"', 'group = "root"']
    return "\n".join(lines) + "\n"


def prepare_embed_root(root: str) -> None:
    """Write the embedded driver's qemu.conf (embed_qemu_conf) below root."""
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    conf = os.path.join(root, "etc", "qemu.conf")
    with open(conf + ".tmp", "w") as f:
        f.write(embed_qemu_conf(as_root=os.geteuid() == 0))
    os.replace(conf + ".tmp", conf)


def _capabilities_dir(root: str) -> str:
    return os.path.join(root, "cache", "qemu", "capabilities")


def embed_capabilities_dir(root: str) -> str:
    """Where an embedded driver rooted at ``root`` keeps its QEMU capabilities cache."""
    return _capabilities_dir(root)


def capabilities_files(directory: str) -> dict[str, int]:
    """The capabilities cache's files and their modification times: libvirt writes a file
    whenever it probes a QEMU, so a change across a define means it probed (no usable cache)."""
    found = {}
    for path in glob.glob(os.path.join(directory, "*.xml")):
        try:
            found[os.path.basename(path)] = os.stat(path).st_mtime_ns
        except OSError:
            continue
    return found


def _copy_atomically(src: str, dst_dir: str) -> None:
    """Copy via a temp name + os.replace, so a concurrent reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=dst_dir, prefix=".tmp-", suffix=".xml")
    try:
        os.fchmod(fd, 0o644)  # VM users read the node's shared cache (see --isolate)
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            out.write(inp.read())
        os.replace(tmp, os.path.join(dst_dir, os.path.basename(src)))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _same_content(a: str, b: str) -> bool:
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read()
    except FileNotFoundError:
        return False


def seed_capabilities_cache(root: str, cache_dir: str) -> int:
    """Copy a shared QEMU capabilities cache into the embed root (saves ~4 s of probing).

    libvirt re-validates each file (QEMU binary ctime, libvirt version, kernel), so a stale
    cache only costs a re-probe. Returns the number of files copied.
    """
    return seed_capabilities_dir(_capabilities_dir(root), cache_dir)


def seed_capabilities_dir(target: str, cache_dir: str) -> int:
    """Copy the shared cache's files into ``target`` (a libvirt capabilities directory:
    an embed root's, or a session daemon's, see launcher/session.py)."""
    files = glob.glob(os.path.join(cache_dir, "*.xml"))
    if not files:
        return 0
    os.makedirs(target, exist_ok=True)
    for path in files:
        _copy_atomically(path, target)
    return len(files)


def save_capabilities_cache(root: str, cache_dir: str) -> int:
    """Copy the embed root's capabilities files back to the shared cache if they differ."""
    return save_capabilities_dir(_capabilities_dir(root), cache_dir)


def save_capabilities_dir(source: str, cache_dir: str) -> int:
    """Copy a libvirt capabilities directory's files to the shared cache if they differ."""
    os.makedirs(cache_dir, exist_ok=True)
    copied = 0
    for path in glob.glob(os.path.join(source, "*.xml")):
        if not _same_content(path, os.path.join(cache_dir, os.path.basename(path))):
            _copy_atomically(path, cache_dir)
            copied += 1
    return copied


def warm_capabilities_cache(root: str, cache_dir: str) -> int:
    """Probe QEMU's capabilities in a scratch embed root (nothing is defined) and save them to
    the shared cache; returns the number of files written. Run by the handler as root when
    launchers run as VM users, who may read the cache but not write it."""
    prepare_embed_root(root)
    seed_capabilities_cache(root, cache_dir)
    host = Host(f"qemu:///embed?root={root}")
    host.open()
    try:
        host.conn.getDomainCapabilities(None, os.uname().machine, None, "qemu")
        # Every installed emulator (qemu-system-i386 too): a session daemon's first defineXML
        # asks for the host capabilities, which probes them all (~4 s each when not cached).
        host.conn.getCapabilities()
    except libvirt.libvirtError as e:
        raise classify(e) from e
    return save_capabilities_cache(root, cache_dir)


@dataclass(frozen=True)
class LifecycleEvent:
    """One libvirt lifecycle event (VIR_DOMAIN_EVENT_* and its detail)."""

    uuid: str
    event: int
    detail: int


class Guest:
    """One libvirt domain; every method raises only LauncherError subclasses."""

    def __init__(self, host: "Host", domain: libvirt.virDomain) -> None:
        self._host = host
        self._domain = domain
        self.name: str = domain.name()
        self.uuid: str = domain.UUIDString()

    @property
    def domain(self) -> libvirt.virDomain:
        """The libvirt domain itself (for the guest agent poller, launcher/guest_agent.py)."""
        return self._domain

    def state(self) -> tuple[int, int]:
        """libvirt's raw (state, reason)."""
        try:
            state, reason = self._domain.state()
        except libvirt.libvirtError as e:
            raise classify(e) from e
        return state, reason

    def is_active(self) -> bool:
        try:
            return bool(self._domain.isActive())
        except libvirt.libvirtError as e:
            raise classify(e) from e

    def start(self) -> None:
        try:
            self._domain.create()
        except libvirt.libvirtError as e:
            raise classify(e, starting=True) from e

    def shutdown(self) -> None:
        """Press the ACPI power button; the guest decides whether to power off."""
        try:
            # Explicitly ACPI: with a guest agent connected, libvirt would otherwise ask the
            # agent first (guest-shutdown), which a guest without a shutdown command fails.
            self._domain.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        except libvirt.libvirtError as e:
            raise classify(e) from e

    def suspend(self) -> None:
        """Pause the vCPUs (QEMU keeps running)."""
        try:
            self._domain.suspend()
        except libvirt.libvirtError as e:
            raise classify(e) from e

    def resume(self) -> None:
        try:
            self._domain.resume()
        except libvirt.libvirtError as e:
            raise classify(e) from e

    def reboot(self) -> None:
        """Ask the guest to reboot through ACPI (the guest decides)."""
        try:
            self._domain.reboot(libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
        except libvirt.libvirtError as e:
            raise classify(e) from e

    def reset(self) -> None:
        """Press the reset button: the guest restarts at once, same QEMU."""
        try:
            self._domain.reset(0)
        except libvirt.libvirtError as e:
            raise classify(e) from e

    def save(self, path: str) -> None:
        """Write the guest's memory to path; the domain stops (libvirt's virDomainSave)."""
        try:
            self._domain.save(path)
        except libvirt.libvirtError as e:
            raise classify(e) from e

    def destroy(self) -> None:
        """Kill QEMU at once; already stopped is not an error."""
        try:
            self._domain.destroy()
        except libvirt.libvirtError as e:
            err = classify(e)
            if not isinstance(err, DomainNotRunning):
                raise err from e

    def undefine(self) -> None:
        """Forget the domain; already gone is not an error."""
        try:
            self._domain.undefine()
        except libvirt.libvirtError as e:
            err = classify(e)
            if not isinstance(err, DomainNotFound):
                raise err from e

    def qemu_pid(self) -> int:
        """QEMU's pid while the domain is active, else 0."""
        if not self.is_active():
            return 0
        return self._host.qemu_pid(self.name, self.uuid)


class Host:
    """The libvirt connection plus the default event loop that embed mode needs."""

    def __init__(self, uri: str, pid_dir: str | None = None) -> None:
        self.uri = uri
        self.root = embed_root(uri)
        # Where libvirt keeps QEMU's NAME.pid (embed: ROOT/run/qemu; session: given).
        self.pid_dir = pid_dir or (os.path.join(self.root, "run", "qemu") if self.root else None)
        self._conn: libvirt.virConnect | None = None
        self._callbacks: list[Callable[[LifecycleEvent], None]] = []
        self.loop = EventLoop()  # console streams are worked on its thread only (event_loop.py)

    def open(self) -> None:
        """Start the event loop, open the connection, subscribe to lifecycle events.

        The event loop must be registered before the connection opens; the embedded QEMU
        driver runs its monitor I/O on it.
        """
        # Errors reach callers as exceptions; libvirt's default handler would also print them.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        self.loop.start()
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as e:
            raise HypervisorUnavailable(f"cannot open {self.uri}: {e.get_error_message()}") from e
        self._conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)

    def on_lifecycle(self, callback: Callable[[LifecycleEvent], None]) -> None:
        """Call ``callback`` (on the event-loop thread: keep it short) for each event."""
        self._callbacks.append(callback)

    def _on_lifecycle(self, conn: libvirt.virConnect, dom: libvirt.virDomain,
                      event: int, detail: int, opaque: object) -> None:
        ev = LifecycleEvent(dom.UUIDString(), event, detail)
        for callback in self._callbacks:
            try:
                callback(ev)
            except Exception:  # never let a callback kill the event loop
                log.exception("lifecycle callback failed")

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None:
            raise HypervisorUnavailable("connection is not open")
        return self._conn

    def lookup(self, uuid: str) -> Guest:
        try:
            return Guest(self, self.conn.lookupByUUIDString(uuid))
        except libvirt.libvirtError as e:
            raise classify(e) from e

    def restore(self, path: str, xml: str) -> None:
        """Resume a saved guest from path, with xml's host-specific parts (paths) instead of
        the saved ones; the domain (same uuid) must be defined already."""
        try:
            self.conn.restoreFlags(path, xml, 0)
        except libvirt.libvirtError as e:
            raise classify(e, starting=True) from e

    def define(self, xml: str) -> Guest:
        """Define (or redefine) a persistent domain; probes QEMU on a cold cache."""
        try:
            return Guest(self, self.conn.defineXML(xml))
        except libvirt.libvirtError as e:
            raise classify(e, starting=True) from e

    def qemu_pid(self, name: str, uuid: str) -> int:
        """QEMU's pid: the embed root's pid file, else the process whose -uuid matches."""
        if self.pid_dir:
            try:
                with open(os.path.join(self.pid_dir, f"{name}.pid")) as f:
                    return int(f.read().strip())
            except (OSError, ValueError):
                pass
        if not self.uri.startswith("qemu"):
            return 0  # e.g. test:///default: there is no QEMU process
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if b"-uuid" in args and uuid.encode() in args and any(b"qemu" in a for a in args[:1]):
                return int(entry)
        return 0
