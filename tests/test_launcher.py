"""Integration tests of corral-launcher with a real guest under TCG (no mocks).

Each test runs `python -m launcher.main` on a fresh VM dir with --emulation on (nested KVM
is broken on the test machines) and talks to it over its unix socket. A session-wide
capabilities cache means only the first start pays libvirt's ~4 s QEMU probe.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest

import launcher  # noqa: F401  (sets GRPC_ENABLE_FORK_SUPPORT before grpc is used)
from corral.v1 import launcher_pb2, launcher_pb2_grpc, vm_pb2

pytestmark = pytest.mark.guest

REPO = Path(__file__).resolve().parent.parent
pb = launcher_pb2


@pytest.fixture(scope="session")
def guest_dir() -> Path:
    """The test guest (vmlinuz + initrd.gz), built once by scripts/build-guest.sh."""
    if shutil.which("qemu-system-x86_64") is None:
        print("qemu-system-x86_64 is not installed")
        pytest.skip("qemu-system-x86_64 is not installed")
    out = Path(os.environ.get("CORRAL_GUEST_DIR", "/var/tmp/corral-guest"))
    result = subprocess.run([str(REPO / "scripts" / "build-guest.sh"), str(out)],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        reason = f"cannot build the test guest: {result.stderr.strip()[-500:]}"
        print(reason)
        pytest.skip(reason)
    return out


@pytest.fixture(scope="session")
def capabilities_cache() -> Iterator[Path]:
    # World-readable (not below pytest's 0700 tmp dir): session-mode launchers run as VM users.
    path = Path(tempfile.mkdtemp(prefix="corral-capcache-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


#: Session-mode launchers run as their own (unnamed) uid, like the handler's isolation does.
SESSION_UID_BASE = 231000


def kill_uid(uid: int) -> None:
    """Every process of a test VM user (its session libvirtd, virtlogd, QEMU)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass


class Launcher:
    """One VM dir plus the launcher processes started on it; cleans up everything."""

    def __init__(self, vm_dir: Path, cache: Path, mode: str = "embed", uid: int = 0) -> None:
        self.dir = vm_dir
        self.cache = cache
        self.mode = mode
        self.uid = uid
        self.procs: list[subprocess.Popen] = []
        self.qemu_pids: set[int] = set()
        if mode == "session":
            os.chown(vm_dir, uid, uid)
            vm_dir.chmod(0o700)

    @property
    def sock(self) -> Path:
        return self.dir / "launcher.sock"

    def write_vm(self, kernel: str, initrd: str, cmdline: str = "console=ttyS0") -> None:
        vm = vm_pb2.VirtualMachine()
        vm.metadata.name = "t-" + self.dir.name[-8:].lower().replace("_", "-")
        vm.metadata.uid = str(uuid.uuid4())
        vm.spec.vcpus = 1
        vm.spec.memory_mib = 128
        vm.spec.boot.kernel.kernel_path = kernel
        vm.spec.boot.kernel.initrd_path = initrd
        vm.spec.boot.kernel.cmdline = cmdline
        (self.dir / "vm.binpb").write_bytes(vm.SerializeToString())

    def start(self) -> subprocess.Popen:
        log = open(self.dir / "launcher.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "launcher.main", "--vm-dir", str(self.dir),
             "--emulation", "on", "--capabilities-cache", str(self.cache),
             *(["--libvirt-mode", "session", "--isolate"] if self.mode == "session" else [])],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def stub(self) -> launcher_pb2_grpc.LauncherServiceStub:
        channel = grpc.insecure_channel(f"unix:{self.sock}")
        return launcher_pb2_grpc.LauncherServiceStub(channel)

    def status(self) -> launcher_pb2.DomainStatus:
        return self.stub().GetDomainStatus(pb.GetDomainStatusRequest(), timeout=5).status

    def wait_status(self, predicate: Callable[[launcher_pb2.DomainStatus], bool],
                    timeout: float = 20) -> launcher_pb2.DomainStatus:
        deadline = time.monotonic() + timeout
        last: launcher_pb2.DomainStatus | None = None
        while time.monotonic() < deadline:
            if self.sock.exists():
                try:
                    last = self.status()
                    if last.qemu_pid:
                        self.qemu_pids.add(last.qemu_pid)
                    if predicate(last):
                        return last
                except grpc.RpcError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"status not reached in {timeout}s; last: {last}\n{self.log()}")

    def wait_serial(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        serial = self.dir / "serial.log"
        while time.monotonic() < deadline:
            if serial.exists() and text.encode() in serial.read_bytes():
                return
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not in serial.log after {timeout}s\n{self.log()}")

    def log(self) -> str:
        path = self.dir / "launcher.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for pid in self.qemu_pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.uid:
            kill_uid(self.uid)
        shutil.rmtree(self.dir, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def session_daemons(uid: int) -> list[int]:
    """pids of live libvirtd/virtlogd processes of uid."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid != uid or not pid_alive(int(entry)):
                    continue
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() in ("libvirtd", "virtlogd"):
                        found.append(int(entry))
            except OSError:
                pass
    return found


_next_uid = [SESSION_UID_BASE + (os.getpid() % 1000) * 10]


@pytest.fixture(params=["embed", "session"])
def vm(request: pytest.FixtureRequest, guest_dir: Path, capabilities_cache: Path) -> Iterator[Launcher]:
    """One VM dir; parametrized over the libvirt modes (session: runs as its own uid)."""
    mode = request.param
    if mode == "session" and (os.geteuid() != 0 or shutil.which("libvirtd") is None):
        pytest.skip("session mode needs root (to run as a VM uid) and libvirtd")
    # A short path: libvirt's monitor socket lives under it and unix paths max out at 107.
    vm_dir = Path(tempfile.mkdtemp(prefix="corral-lt-", dir="/tmp"))
    _next_uid[0] += 1
    lau = Launcher(vm_dir, capabilities_cache, mode, _next_uid[0] if mode == "session" else 0)
    lau.write_vm(str(guest_dir / "vmlinuz"), str(guest_dir / "initrd.gz"))
    yield lau
    lau.cleanup()


def running(s: launcher_pb2.DomainStatus) -> bool:
    return s.state == pb.DOMAIN_STATE_RUNNING


def test_boot_adopt_after_launcher_sigkill_then_kill(vm: Launcher) -> None:
    first = vm.start()
    status = vm.wait_status(running, timeout=25)
    assert status.reason == "booted"
    assert status.launcher_pid == first.pid
    assert status.serial_log_path == str(vm.dir / "serial.log")
    assert (vm.dir / "started").exists()
    qemu_pid = status.qemu_pid
    assert qemu_pid > 0 and pid_alive(qemu_pid)
    vm.wait_serial("CORRAL-GUEST-READY")

    first.kill()
    first.wait()
    assert pid_alive(qemu_pid), "QEMU must survive its launcher"

    second = vm.start()
    status = vm.wait_status(lambda s: s.launcher_pid == second.pid and running(s))
    assert status.qemu_pid == qemu_pid, "the guest was restarted instead of adopted"

    watch = vm.stub().WatchDomainStatus(pb.WatchDomainStatusRequest(), timeout=20)
    assert next(watch).status.state == pb.DOMAIN_STATE_RUNNING

    final = vm.stub().KillDomain(pb.KillDomainRequest(), timeout=15).status
    assert final.state == pb.DOMAIN_STATE_SHUTOFF and final.reason == "destroyed"
    assert second.wait(timeout=10) == 0
    assert not pid_alive(qemu_pid)
    assert not vm.sock.exists()
    if vm.mode == "session":
        assert not session_daemons(vm.uid), "the run's libvirtd/virtlogd must stop with it"
    rest = [m.status for m in watch]  # the stream ends when the launcher exits
    assert rest and rest[-1].state == pb.DOMAIN_STATE_SHUTOFF


def test_missing_kernel_reports_crashed(vm: Launcher, guest_dir: Path) -> None:
    vm.write_vm("/nonexistent/vmlinuz", str(guest_dir / "initrd.gz"))
    proc = vm.start()
    status = vm.wait_status(lambda s: s.state == pb.DOMAIN_STATE_CRASHED)
    assert status.reason == "failed"
    assert "/nonexistent/vmlinuz" in status.message, status.message
    assert status.qemu_pid == 0
    assert proc.poll() is None, "the launcher keeps serving so the handler can read the error"
    assert not (vm.dir / "started").exists()
    # Killing an unstarted domain is just cleanup.
    final = vm.stub().KillDomain(pb.KillDomainRequest(), timeout=10).status
    assert final.state == pb.DOMAIN_STATE_CRASHED
    assert proc.wait(timeout=10) == 0


def test_sigterm_leaves_guest_then_qemu_crash_then_shutdown(vm: Launcher) -> None:
    first = vm.start()
    qemu_pid = vm.wait_status(running, timeout=25).qemu_pid
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0
    assert pid_alive(qemu_pid), "SIGTERM must not touch the domain"
    assert not vm.sock.exists()

    second = vm.start()
    status = vm.wait_status(lambda s: s.launcher_pid == second.pid and running(s))
    assert status.qemu_pid == qemu_pid
    time.sleep(1)  # let libvirt finish reconnecting to QEMU's monitor
    os.kill(qemu_pid, signal.SIGKILL)
    status = vm.wait_status(lambda s: s.state == pb.DOMAIN_STATE_CRASHED)
    assert status.reason == "crashed" and status.qemu_pid == 0

    # Shutdown of an already stopped domain only cleans up, and the launcher exits.
    final = vm.stub().ShutdownDomain(pb.ShutdownDomainRequest(grace_period_seconds=5),
                                     timeout=15).status
    assert final.state == pb.DOMAIN_STATE_CRASHED
    assert second.wait(timeout=10) == 0
    # A later launcher on the same dir does not boot the guest a second time.
    third = vm.start()
    # (Its first status can be STARTING while it looks at the directory: wait for its verdict.)
    status = vm.wait_status(lambda s: s.launcher_pid == third.pid and s.state != pb.DOMAIN_STATE_STARTING)
    assert status.state in (pb.DOMAIN_STATE_SHUTOFF, pb.DOMAIN_STATE_CRASHED)
    assert status.qemu_pid == 0


def test_shutdown_destroys_after_grace_period(vm: Launcher) -> None:
    proc = vm.start()
    qemu_pid = vm.wait_status(running, timeout=25).qemu_pid
    vm.wait_serial("CORRAL-GUEST-READY")
    t0 = time.monotonic()
    # The busybox guest has no ACPI daemon: the power button is ignored, so destroy follows.
    final = vm.stub().ShutdownDomain(pb.ShutdownDomainRequest(grace_period_seconds=1),
                                     timeout=15).status
    elapsed = time.monotonic() - t0
    assert final.state == pb.DOMAIN_STATE_SHUTOFF
    assert final.reason in ("destroyed", "shutdown")
    assert elapsed >= 0.9 or final.reason == "shutdown"
    assert proc.wait(timeout=10) == 0
    assert not pid_alive(qemu_pid)
    assert not vm.sock.exists()


def test_guest_power_off_reports_shutoff(vm: Launcher, guest_dir: Path) -> None:
    # busybox `poweroff -f` as init powers the machine off right after boot.
    vm.write_vm(str(guest_dir / "vmlinuz"), str(guest_dir / "initrd.gz"),
                cmdline="console=ttyS0 rdinit=/bin/poweroff -- -f")
    proc = vm.start()
    status = vm.wait_status(lambda s: s.state == pb.DOMAIN_STATE_SHUTOFF, timeout=25)
    assert status.reason == "shutdown"
    assert proc.poll() is None
    vm.stub().KillDomain(pb.KillDomainRequest(), timeout=10)
    assert proc.wait(timeout=10) == 0
