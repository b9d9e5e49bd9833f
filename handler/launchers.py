"""The handler's view of one VM's launcher: its directory on the node, its process, and the
domain status it streams. Launchers run in their own session so they outlive the handler;
a new handler finds them again through their directories and sockets."""
from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from corral.v1 import launcher_pb2, launcher_pb2_grpc, vm_pb2, vnc_pb2_grpc
from corral.rundir import LOG_FILE, PID_FILE, SOCKET_FILE, VM_FILE  # noqa: F401 (VM_FILE: handler.agent, tests)
from handler import cpus, spawn
from handler.vm_files import (path_identity, open_in_vm_dir, open_launcher_socket, read_in_vm_dir, run_record_path,
                              write_atomically, write_in_vm_dir)
from handler.isolation import Isolation
from handler.spares import SparePool

log = logging.getLogger(__name__)

FINISHED_MARKER = "finished"
#: Written by the handler before starting a live migration's target launcher (launcher/migration.py).
INCOMING_MARKER = "incoming"
#: Root's marks of a run (Launcher.mark_path), removed with it.
RUN_MARKS = (FINISHED_MARKER, INCOMING_MARKER, "arrived", "migrating")
#: A launcher that dies sooner than this after its start counts towards backing off.
QUICK_DEATH_SECONDS = 10.0
#: A launcher's socket appears within milliseconds: don't wait gRPC's default second to retry.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 500),
    # Each launcher's channel keeps its own connections. gRPC otherwise shares connections
    # between channels of the same target, and the target here, /proc/self/fd/N, names
    # whatever descriptor N is now: a closed launcher's live connection could serve the next
    # launcher given the same number (another VM's console, stop, kill).
    ("grpc.use_local_subchannel_pool", 1),
]


#: libvirt puts QEMU's monitor socket ~62 bytes below the VM directory, and a unix socket
#: path has at most 107 bytes: the VM directory must stay this short.
MAX_VM_DIR_LENGTH = 43


def instance_uid(vm: vm_pb2.VirtualMachine) -> str:
    """Each run of a VM has its own directory, launcher and domain."""
    return vm.status.instance_uid or vm.metadata.uid


def run_owner(vm_dir: Path) -> tuple[int, int]:
    """(uid, gid) owning a run's directory (not following a link): the run's user when
    isolated, else root. Files the handler makes for the run are given to it."""
    st = os.stat(vm_dir, follow_symlinks=False)
    return st.st_uid, st.st_gid


def vm_dir_for(state_dir: Path, uid: str) -> Path:
    """The VM's directory: named from the server-made uid (never a user string), kept short."""
    return state_dir / "vms" / uid.replace("-", "")[:12]


def state_dir_problem(state_dir: Path) -> str | None:
    longest = len(str(vm_dir_for(state_dir, "0" * 32)))
    if longest > MAX_VM_DIR_LENGTH:
        return (f"state dir {str(state_dir)!r} is too long: VM directories below it would be {longest} "
                f"characters, and QEMU's sockets need them to be at most {MAX_VM_DIR_LENGTH} "
                "(use a short path such as /var/lib/corral)")
    return None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pids_with_cmdline(text: str) -> list[int]:
    needle = text.encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if needle in handle.read() and pid_alive(int(entry)):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _is_qemu(pid: int) -> bool:
    try:
        return "qemu" in os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return False


class Launcher:
    """One VM directory and the launcher process serving it."""

    def __init__(self, *, vm_dir: Path, on_change: Callable[[], None], isolation: Isolation | None = None) -> None:
        self.vm_dir = vm_dir
        self.on_change = on_change
        self.isolation = isolation
        vm = vm_pb2.VirtualMachine()
        vm.ParseFromString(self._read_record(vm_dir))
        self.vm = vm
        self.uid = instance_uid(vm)
        self.status: launcher_pb2.DomainStatus | None = None
        self.process: subprocess.Popen | None = None
        self.spawned_at = 0.0
        self.quick_deaths = 0  # launchers that died soon after starting, in a row
        self.ended: tuple[str, str, str] | None = None  # (reason, message, saved path) of a requested end
        self.closed = threading.Event()
        self._follower: threading.Thread | None = None
        self._dial_lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: launcher_pb2_grpc.LauncherServiceStub | None = None
        self._socket_fd = self._pinned_fd = -1
        self._socket_seen: tuple[int, int] | None = None  # (dev, inode) of what the channel dials

    # -- directory --------------------------------------------------------------------------
    @staticmethod
    def _read_record(vm_dir: Path) -> bytes:
        """The run's VM as root recorded it. A run started by a handler that kept no records
        has only the VM directory's copy: taken once (logged), and recorded from then on."""
        record = run_record_path(vm_dir)
        try:
            return record.read_bytes()
        except FileNotFoundError:
            data = read_in_vm_dir(vm_dir / VM_FILE)
            log.warning("%s: no run record in %s: taking the VM directory's copy once", vm_dir, record.parent)
            record.parent.mkdir(mode=0o700, exist_ok=True)
            write_atomically(record, data)
            return data

    @classmethod
    def create_dir(cls, *, state_dir: Path, vm: vm_pb2.VirtualMachine, isolation: Isolation | None = None) -> Path:
        """The VM's directory with its vm.binpb (root's, readable); with isolation it then
        belongs to the VM's own user, mode 0700."""
        vm_dir = vm_dir_for(state_dir, instance_uid(vm))
        vm_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = vm.SerializeToString()
        record = run_record_path(vm_dir)
        record.parent.mkdir(mode=0o700, exist_ok=True)
        write_atomically(record, data)  # root's own directory: trusted
        write_in_vm_dir(vm_dir / VM_FILE, data)  # the launcher's copy
        if vm.spec.dedicated_cpu_placement:
            pinned = cpus.allocate(vm_dir, vm.spec.vcpus)
            if pinned is not None:
                write_in_vm_dir(vm_dir / cpus.CPUSET_FILE, cpus.format_cpuset(pinned).encode())
        if isolation is not None:
            isolation.claim_dir(vm_dir)
        return vm_dir

    @property
    def cgroup_name(self) -> str:
        """The run's cgroup: its instance uid; a run that arrived by live migration (same
        instance uid) gets its own name, so that both ends never share a group when they
        share a machine's cgroup tree (tests put two nodes on one machine)."""
        return f"{self.uid}-in" if self.marked(INCOMING_MARKER) else self.uid

    @property
    def socket_path(self) -> Path:
        return self.vm_dir / SOCKET_FILE

    def mark_path(self, name: str) -> Path:
        """Root's mark NAME of this run (STATE_DIR/runs/DIR.NAME: finished, incoming, arrived,
        migrating). Never a file in the VM's directory: its user could plant one there, and
        root would then stop re-binding a running guest's instance lock, or keep no guest
        back while a migration is undecided (a second copy could start elsewhere)."""
        return run_record_path(self.vm_dir).with_suffix("." + name)

    def marked(self, name: str) -> bool:
        return self.mark_path(name).exists()

    def mark(self, name: str, content: bytes = b"") -> None:
        path = self.mark_path(name)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.write_bytes(content)

    def unmark(self, name: str) -> None:
        self.mark_path(name).unlink(missing_ok=True)

    @property
    def finished_record(self) -> Path:
        return self.mark_path(FINISHED_MARKER)

    @property
    def finished(self) -> bool:
        if self.finished_record.exists():
            return True
        try:  # a run finished by a handler from before the records: its marker, if root's
            st = os.lstat(self.vm_dir / FINISHED_MARKER)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_uid == 0

    def mark_finished(self) -> None:
        self.mark(FINISHED_MARKER)

    def remove_dir(self) -> None:
        self.close()
        self.stop_libvirt_daemons()
        try:
            owner = run_owner(self.vm_dir)[0]
        except OSError:
            owner = -1
        shutil.rmtree(self.vm_dir, ignore_errors=True)  # never follows symlinks (fd-based)
        run_record_path(self.vm_dir).unlink(missing_ok=True)
        for name in RUN_MARKS:
            self.unmark(name)
        cpus.release(self.vm_dir)
        if self.isolation is not None:
            self.isolation.remove_cgroup(self.cgroup_name)
            if owner > 0:  # its disks and save folder go back before its uid is free again
                self.isolation.release(owner)

    # -- process ----------------------------------------------------------------------------
    def spawn(self, command: list[str], spares: SparePool | None = None) -> None:
        """Start a launcher for this directory (a warm spare when one is ready); it adopts a
        running domain if there is one."""
        if self.spawned_at and time.monotonic() - self.spawned_at < QUICK_DEATH_SECONDS:
            self.quick_deaths += 1
        else:
            self.quick_deaths = 0
        self.spawned_at = time.monotonic()
        # With isolation the launcher joins the VM's cgroup (a spare is moved into it here)
        # before it reads its directory, so QEMU starts inside it.
        cgroup = self.isolation.cgroup_for(self.cgroup_name, self.vm) if self.isolation is not None else []
        spare = spares.take() if spares is not None and not self.quick_deaths else None
        if spare is not None and spare.join(cgroup) and spare.assign(self.vm_dir):
            self.process = spare.process
        else:
            spare = None
            log_fd = open_in_vm_dir(self.vm_dir / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                self.process = subprocess.Popen(
                    [*spawn.launcher_prefix(self.uid), *command, "--vm-dir", str(self.vm_dir),
                     *(arg for procs in cgroup for arg in ("--cgroup", procs))],
                    cwd="/" if self.isolation is not None else self.vm_dir, stdin=subprocess.DEVNULL,
                    stdout=log_fd, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                )
            finally:
                os.close(log_fd)
        log.info("vm %s: launcher pid %d started%s", self.vm.metadata.name, self.process.pid,
                 " (warm spare)" if spare is not None else "")
        self.follow()

    def respawn_delay(self) -> float:
        """Seconds to wait before the next start: launchers that keep dying back off."""
        if not self.quick_deaths:
            return 0.0
        return min(0.5 * 2 ** self.quick_deaths, 30.0) - (time.monotonic() - self.spawned_at)

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = read_in_vm_dir(self.vm_dir / LOG_FILE, 64 * 1024).decode(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])[-500:]

    def alive(self) -> bool:
        """Cheap check: our child, or the pid the launcher reported, still runs."""
        if self.process is not None and self.process.poll() is None:
            return True
        return self.status is not None and pid_alive(self.status.launcher_pid)

    def running(self) -> bool:
        """Thorough check before starting another launcher or giving up on this one: any
        process serving this directory (say, one a previous handler started moments ago)."""
        if self.alive():
            return True
        try:
            pid = int(read_in_vm_dir(self.vm_dir / PID_FILE, 64))
        except (OSError, ValueError):
            pid = 0
        if pid and pid_alive(pid) and b"launcher" in _cmdline(pid):
            return True
        return bool(pids_with_cmdline(f"--vm-dir\0{self.vm_dir}\0"))

    def qemu_pids(self) -> list[int]:
        """QEMU processes of this VM (their command line carries the VM's uuid) and of this
        directory (its paths: libvirt's files for it live below it). A live migration keeps
        the uuid, and both ends may share one machine (tests): the other end's QEMU is not
        this run's."""
        here = f"{self.vm_dir}/".encode()
        return [pid for pid in pids_with_cmdline(self.domain_uuid) if _is_qemu(pid) and here in _cmdline(pid)]

    def stop_libvirt_daemons(self) -> None:
        """A session-mode run's own libvirtd and virtlogd (pid files under DIR/run/libvirt):
        they outlive the launcher by design, so the handler ends them with the run."""
        for name in ("libvirtd", "virtlogd"):
            try:
                pid = int(read_in_vm_dir(self.vm_dir / "run" / "libvirt" / f"{name}.pid", 64))
            except (OSError, ValueError):
                continue
            try:  # the run's user owns them (a VM's user could point the pid file elsewhere)
                mine = os.stat(f"/proc/{pid}").st_uid == run_owner(self.vm_dir)[0]
            except OSError:
                continue
            if mine and pid_alive(pid) and name.encode() in _cmdline(pid):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass

    @property
    def domain_uuid(self) -> str:
        """The libvirt domain's uuid: a restored run keeps the uuid of the run that was saved."""
        return self.vm.status.restore_from.instance_uid or self.uid

    def probe(self, timeout: float = 3.0) -> bool:
        """Whether a launcher answers on the socket now (used to adopt after a restart)."""
        if not self.socket_path.exists():
            return False
        try:
            self.status = self.stub.GetDomainStatus(launcher_pb2.GetDomainStatusRequest(), timeout=timeout).status
            return True
        except grpc.RpcError:
            return False

    # -- status stream ----------------------------------------------------------------------
    def follow(self) -> None:
        if self._follower is None or not self._follower.is_alive():
            self._follower = threading.Thread(target=self._follow, name=f"launcher-{self.uid[:8]}", daemon=True)
            self._follower.start()

    def _follow(self) -> None:
        """Mirror the launcher's status until closed; wake the reconciler when it dies (it may
        be replaced by a new launcher, which this same loop then follows)."""
        was_alive = True
        while not self.closed.is_set():
            if self.socket_path.exists():
                try:
                    for response in self.stub.WatchDomainStatus(launcher_pb2.WatchDomainStatusRequest()):
                        self.status = response.status
                        self.on_change()
                except grpc.RpcError as exc:
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                        log.warning("vm %s: launcher stream: %s", self.vm.metadata.name, exc.details())
                except ValueError:  # the channel was closed: we are shutting down
                    return
            if self.closed.is_set():
                return
            alive = self.alive()
            if was_alive and not alive:
                self.on_change()  # let the reconciler decide (respawn or done)
            was_alive = alive
            time.sleep(0.02 if self.status is None else 0.2)

    def close(self) -> None:
        self.closed.set()
        with self._dial_lock:
            if self._channel is not None:
                self._channel.close()
            self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._socket_fd, self._pinned_fd):
            if fd >= 0:
                os.close(fd)
        self._socket_fd = self._pinned_fd = -1

    # -- the launcher's socket ------------------------------------------------------------------
    @property
    def stub(self) -> launcher_pb2_grpc.LauncherServiceStub:
        """A stub on the launcher's socket, dialed through an O_PATH descriptor of it, so that
        what was checked is what root connects to: a socket (never a symlink) owned by the
        run's user (root without isolation), the owner of the VM's directory. The directory
        is the VM's: its user could otherwise point root at another VM's launcher. A new
        socket (a new launcher) is checked and dialed afresh; a refused one is never dialed
        (calls fail UNAVAILABLE)."""
        with self._dial_lock:
            if self.closed.is_set():  # calls on a closed launcher raise ValueError, as before
                if self._stub is None:
                    self._redial(None)
                    self._channel.close()
                return self._stub
            seen = path_identity(self.socket_path)
            if self._stub is None or seen != self._socket_seen:
                self._redial(seen)
            return self._stub

    @property
    def vnc_stub(self) -> vnc_pb2_grpc.LauncherVncServiceStub:
        """LauncherVncService on the channel ``stub`` checked and dialed."""
        self.stub  # noqa: B018 - (re)dials when the socket changed
        with self._dial_lock:
            return vnc_pb2_grpc.LauncherVncServiceStub(self._channel)

    def _redial(self, seen: tuple[int, int] | None) -> None:
        if self._channel is not None:
            self._channel.close()
        self._close_fds()
        try:
            owner = run_owner(self.vm_dir)[0]
        except OSError:
            owner = -1  # the directory is gone: nothing there is this run's
        self._socket_fd, self._pinned_fd = open_launcher_socket(self.socket_path, owner=owner)
        if self._pinned_fd >= 0:
            st = os.fstat(self._pinned_fd)
            seen = (st.st_dev, st.st_ino)  # what was checked, even if it changed since the lstat
        self._socket_seen = seen
        self._channel = grpc.insecure_channel(f"unix:/proc/self/fd/{self._socket_fd}", options=CHANNEL_OPTIONS)
        self._stub = launcher_pb2_grpc.LauncherServiceStub(self._channel)

    # -- commands ---------------------------------------------------------------------------
    def shutdown(self, grace_seconds: int) -> launcher_pb2.DomainStatus:
        response = self.stub.ShutdownDomain(
            launcher_pb2.ShutdownDomainRequest(grace_period_seconds=grace_seconds), timeout=grace_seconds + 30)
        self._reap()
        return response.status

    def kill(self) -> launcher_pb2.DomainStatus:
        response = self.stub.KillDomain(launcher_pb2.KillDomainRequest(), timeout=30)
        self._reap()
        return response.status

    def save(self, path: Path) -> launcher_pb2.DomainStatus:
        """Save the guest's memory to path; the domain stops and the launcher exits."""
        response = self.stub.SaveDomain(launcher_pb2.SaveDomainRequest(path=str(path)), timeout=600)
        self._reap()
        return response.status

    def _reap(self, timeout: float = 10.0) -> None:
        """Wait for the launcher to exit after a stop command."""
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
