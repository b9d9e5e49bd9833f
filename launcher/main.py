"""corral-launcher: one process per VM, owning exactly one libvirt domain.

Command line::

    python -m launcher.main (--vm-dir DIR | --spare) [--emulation auto|on|off]
        [--capabilities-cache CACHEDIR] [--libvirt-uri URI]

``--fence-file PATH`` names the node's fencing deadline (see launcher/fencing.py): once it
passes, the guest is destroyed and reported CRASHED with reason "fenced". ``--fence-guard LIB``
is preloaded into QEMU with that file (corral/fence_guard.py), so QEMU also ends itself at the
deadline when no launcher is left to do it.

``--spare`` starts and imports everything, then reads DIR as one line from stdin (EOF: exit
quietly). The handler keeps one spare ready, so a new VM does not wait ~0.3 s for Python to
start and import gRPC and libvirt. Either way the launcher writes its pid to DIR/launcher.pid.

DIR must hold ``vm.binpb`` (a serialized ``corral.v1.VirtualMachine``). The launcher
creates ``DIR/launcher.sock`` (gRPC LauncherService), ``DIR/libvirt/`` (the state of
``qemu:///embed?root=DIR/libvirt``, the default URI), ``DIR/serial.log`` (the guest's serial
console), ``DIR/agent.sock`` (the guest agent's channel, see launcher/guest_agent.py),
``DIR/vnc.sock`` (QEMU's VNC display, relayed by LauncherVncService: launcher/vnc.py) and
``DIR/started`` (written after the first successful domain start). The handler puts a run's
ephemeral disk overlays (``DIR/disk-NAME.qcow2``) and cloud-init seed (``DIR/cidata.iso``)
there before the launcher starts (handler/devices.py).

Startup: a running domain with the VM's uid is adopted, never restarted (QEMU keeps its
pid across launcher restarts). If the ``started`` marker exists and the domain is not
running, the guest already ran: its status is reported and it is not booted again.
Otherwise the domain is defined and started; if that fails the status is CRASHED with
libvirt's message and the launcher keeps serving so the handler can read it. The socket
is served from just after the libvirt connection opens, so STARTING is visible while a
cold start probes QEMU.

Exit: ShutdownDomain and KillDomain stop and undefine the domain, answer, then the
launcher exits and removes its socket. SIGTERM or SIGINT make the launcher exit WITHOUT
touching the domain: the guest keeps running and the next launcher on DIR adopts it.

Keep DIR short (about 43 bytes or less): libvirt's QEMU monitor socket lives at
DIR/libvirt/lib/qemu/domain-N-SHORTNAME/monitor.sock and unix socket paths max out at 107.

DIR gets o+x (search only) when running as root, because libvirt runs QEMU as its
unprivileged user, which must reach DIR/libvirt; DIR's parents must be searchable too.

``--isolate`` (what the handler passes when per-VM isolation is on, see
launcher/privileges.py): started as root, the launcher joins the cgroups named by
``--cgroup PROCS_FILE`` and becomes DIR's owner before it opens anything in DIR; the
embedded driver then runs QEMU as that user too. DIR stays 0700.

``--libvirt-mode session`` (needs ``--isolate`` or a non-root start: the handler refuses it
without isolation): instead of the embedded driver the launcher runs the run's own
``libvirtd``/``virtlogd`` as the VM user and connects to ``qemu:///session`` (see
launcher/session.py: why, layout, pid files); a restarted launcher reconnects to them. When
the run ends (ShutdownDomain, KillDomain, SaveDomain, a finished migration) the launcher
stops them; after SIGTERM they stay with the guest. Session mode is what makes a VM a live
migration peer: ``DIR/incoming`` (written by the handler before it starts the launcher)
makes the launcher a migration target that never boots the guest itself (launcher/migration.py).

Exit codes: 0 after a stop RPC or a signal; 1 if vm.binpb is unreadable or libvirt
cannot be opened (e.g. another launcher still holds DIR's embedded driver).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import subprocess
import sys
from concurrent import futures

import grpc

from corral.rundir import CPUSET_FILE, LOG_FILE, PID_FILE, SOCKET_FILE, VM_FILE, VNC_SOCKET_FILE, parse_cpuset
from corral.v1 import launcher_pb2_grpc, vm_pb2, vnc_pb2_grpc

from launcher import domain_xml, migration_tls, privileges, reaper, session
from launcher.host import (Host, LauncherError, embed_root, prepare_embed_root, seed_capabilities_cache,
                           warm_capabilities_cache)
from launcher.fencing import FenceWatch
from launcher.service import LauncherServicer
from launcher.supervisor import Supervisor
from launcher.vnc import LauncherVncServicer

log = logging.getLogger("launcher")

SOCKET_NAME = SOCKET_FILE
SERIAL_LOG = "serial.log"
AGENT_SOCKET = "agent.sock"  # the guest agent's channel (launcher/guest_agent.py)
MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the NUL
# DIR + "/libvirt/lib/qemu/domain-NNN-" + 20-char short name + "/monitor.sock" must fit.
MAX_VM_DIR = MAX_UNIX_PATH - 64


def kvm_usable() -> bool:
    """True when /dev/kvm opens read-write (what 'auto' emulation checks)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def ensure_traversable(vm_dir: str) -> None:
    """Let QEMU (run by libvirt as an unprivileged user, e.g. libvirt-qemu) reach DIR/libvirt.

    Adds only search (x) permission for others, not read: the directory cannot be listed.
    """
    mode = os.stat(vm_dir).st_mode
    if os.geteuid() == 0 and not mode & stat.S_IXOTH:
        os.chmod(vm_dir, stat.S_IMODE(mode) | stat.S_IXOTH)


def block_devices(vm: vm_pb2.VirtualMachine) -> frozenset[str]:
    """Persistent disks that are block devices (libvirt's type='block'); the handler checked
    them and made them ours, so a path that cannot be read here is left to libvirt's error."""
    found = set()
    for disk in vm.spec.disks:
        if disk.WhichOneof("source") == "persistent":
            try:
                if stat.S_ISBLK(os.stat(disk.persistent.path).st_mode):
                    found.add(disk.persistent.path)
            except OSError:
                pass
    return frozenset(found)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="corral-launcher", description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--vm-dir", help="the VM's directory (holds vm.binpb)")
    where.add_argument("--spare", action="store_true",
                       help="start, import everything, then read the VM directory from stdin "
                            "(the handler keeps one spare ready so a new VM skips Python's start)")
    where.add_argument("--warm-cache", metavar="SCRATCH",
                       help="probe QEMU's capabilities in SCRATCH (nothing is defined), save them "
                            "to --capabilities-cache and exit")
    parser.add_argument("--emulation", choices=["auto", "on", "off"], default="auto",
                        help="on: TCG (domain type qemu); off: KVM; auto: KVM if /dev/kvm is usable")
    parser.add_argument("--capabilities-cache", metavar="CACHEDIR",
                        help="shared QEMU capabilities cache dir (saves ~4 s on the first start)")
    parser.add_argument("--libvirt-uri", help="default: qemu:///embed?root=VM_DIR/libvirt")
    parser.add_argument("--libvirt-mode", choices=["embed", "session"], default="embed",
                        help="embed: libvirt's QEMU driver inside this process; session: the run's own "
                             "libvirtd as the VM user (a live migration peer; needs --isolate)")
    parser.add_argument("--isolate", action="store_true",
                        help="when started as root: join the --cgroup groups, then run as the VM "
                             "directory's owner (never root) with supplementary group kvm")
    parser.add_argument("--cgroup", action="append", metavar="PROCS_FILE",
                        help="a cgroup.procs file to join before dropping privileges (repeatable)")
    parser.add_argument("--fence-file", help="the node's fencing deadline (CLOCK_MONOTONIC seconds), written "
                                             "by the handler: past it the guest is destroyed")
    parser.add_argument("--fence-guard", metavar="LIB",
                        help="library preloaded into QEMU that ends it once --fence-file's deadline passes")
    return parser.parse_args(argv)


def _exit(code: int) -> None:
    """Leave without running libvirt's teardown: the domain must outlive this process."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def wait_for_assignment() -> str:
    """A spare's wait: one line on stdin names the VM directory; EOF means not needed."""
    line = sys.stdin.readline().strip()
    if not line:
        _exit(0)
    return line


def log_to_vm_dir(vm_dir: str) -> None:
    """A spare's output goes to the VM's launcher.log once it knows its VM."""
    log_fd = os.open(os.path.join(vm_dir, LOG_FILE),
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # from now on the handler's end of the pipe does not matter
    os.close(devnull)


def warm_cache(scratch: str, cache_dir: str | None, mode: str = "embed") -> int:
    if not cache_dir:
        log.error("--warm-cache needs --capabilities-cache")
        return 2
    os.makedirs(scratch, mode=0o711, exist_ok=True)
    ensure_traversable(scratch)
    try:
        if mode == "session":  # a session daemon does not take an embed-probed cache
            n = session.warm_capabilities(scratch, cache_dir)
        else:
            n = warm_capabilities_cache(os.path.join(scratch, "libvirt"), cache_dir)
    except (LauncherError, OSError, subprocess.SubprocessError) as e:
        log.error("cannot probe QEMU's capabilities: %s", e)
        return 1
    log.info("capabilities cache %s warm (%d file(s) updated)", cache_dir, n)
    return 0


def read_cpuset(vm_dir: str) -> tuple[int, ...]:
    """The host CPUs the handler gave a VM with dedicated CPUs (handler/cpus.py); () if none."""
    try:
        with open(os.path.join(vm_dir, CPUSET_FILE)) as f:
            return parse_cpuset(f.read(256))
    except FileNotFoundError:
        return ()
    except (OSError, ValueError) as e:
        log.error("ignoring the CPU set: %s", e)
        return ()


def write_pidfile(vm_dir: str) -> None:
    """So a handler (even a new one) can tell this directory has a live launcher."""
    path = os.path.join(vm_dir, PID_FILE)
    with open(path + ".tmp", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(path + ".tmp", path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    reaper.become_subreaper()  # QEMU (and its probes) become our children: reaped, and seen gone, at once
    if args.warm_cache:
        _exit(warm_cache(args.warm_cache, args.capabilities_cache, args.libvirt_mode))
    vm_dir = os.path.abspath(wait_for_assignment() if args.spare else args.vm_dir)
    if args.isolate:
        # Before anything in vm_dir is opened: it belongs to the VM's user.
        try:
            privileges.join_cgroups(args.cgroup or [])
            uid, gid = privileges.drop_to_owner(vm_dir)
        except (OSError, privileges.PrivilegeError) as e:
            log.error("cannot run as the VM's user: %s", e)
            _exit(1)
    if args.spare:
        log_to_vm_dir(vm_dir)
    if args.isolate:
        log.info("running as uid %d gid %d", uid, gid)
    write_pidfile(vm_dir)
    vm = vm_pb2.VirtualMachine()
    try:
        with open(os.path.join(vm_dir, VM_FILE), "rb") as f:
            vm.ParseFromString(f.read())
    except Exception as e:  # unreadable or not a VirtualMachine
        log.error("cannot read %s: %s", os.path.join(vm_dir, VM_FILE), e)
        _exit(1)

    ensure_traversable(vm_dir)
    if len(vm_dir.encode()) > MAX_VM_DIR:
        log.warning("vm dir is %d bytes; above %d, libvirt's QEMU monitor socket under "
                    "DIR/libvirt may exceed the unix socket path limit", len(vm_dir.encode()),
                    MAX_VM_DIR)
    emulation = {"on": True, "off": False}.get(args.emulation)
    if emulation is None:
        emulation = not kvm_usable()
    session_mode = args.libvirt_mode == "session"
    if session_mode:
        if os.geteuid() == 0:
            log.error("--libvirt-mode session runs libvirtd as the VM's user: use --isolate")
            _exit(1)
        if len(vm_dir.encode()) > MAX_VM_DIR - 8:  # .config/libvirt/qemu/lib/... is 8 bytes deeper
            log.warning("vm dir is %d bytes; above %d, the session daemon's QEMU monitor socket may "
                        "exceed the unix socket path limit", len(vm_dir.encode()), MAX_VM_DIR - 8)
        session.prepare(vm_dir)
        migration_tls.write_qemu_conf(vm_dir)  # before the daemon starts: it reads it once
        if not session.answers(session.libvirt_socket(vm_dir)):  # a running daemon has its cache
            session.seed_capabilities(vm_dir, args.capabilities_cache)
        try:
            session.start_daemons(vm_dir)
        except (OSError, subprocess.SubprocessError) as e:
            log.error("cannot start the session daemons: %s", e)
            _exit(1)
    uri = args.libvirt_uri or (session.uri(vm_dir) if session_mode
                               else f"qemu:///embed?root={os.path.join(vm_dir, 'libvirt')}")
    root = embed_root(uri)
    if root:
        prepare_embed_root(root)
        if args.capabilities_cache:
            try:
                n = seed_capabilities_cache(root, args.capabilities_cache)
                log.info("seeded %d capabilities file(s) from %s", n, args.capabilities_cache)
            except OSError as e:
                log.warning("cannot seed capabilities cache: %s", e)

    host = Host(uri, pid_dir=session.qemu_pid_dir(vm_dir) if session_mode else None)
    try:
        host.open()
    except LauncherError as e:
        log.error("%s", e)
        _exit(1)
    log.info("opened %s (vm %s uid %s, emulation %s)", uri, vm.metadata.name, vm.metadata.uid,
             "on" if emulation else "off")

    options = domain_xml.DomainOptions(emulation=emulation,
                                       serial_log_path=os.path.join(vm_dir, SERIAL_LOG),
                                       agent_socket_path=os.path.join(vm_dir, AGENT_SOCKET),
                                       run_dir=vm_dir, block_devices=block_devices(vm),
                                       fence_file=args.fence_file or "",
                                       fence_guard=args.fence_guard if args.fence_file else "",
                                       cpuset=read_cpuset(vm_dir),
                                       vnc_socket_path=os.path.join(vm_dir, VNC_SOCKET_FILE))
    supervisor = Supervisor(vm, vm_dir, host, options, args.capabilities_cache)
    if supervisor.incoming:
        log.info("incoming: waiting for the guest to arrive by live migration")

    sock = os.path.join(vm_dir, SOCKET_NAME)
    if os.path.exists(sock):
        os.unlink(sock)  # left by a launcher that was killed; libvirt's lock says it is gone
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="grpc"))
    launcher_pb2_grpc.add_LauncherServiceServicer_to_server(LauncherServicer(supervisor), server)
    vnc_pb2_grpc.add_LauncherVncServiceServicer_to_server(LauncherVncServicer(vm_dir), server)
    try:
        server.add_insecure_port(f"unix:{sock}")
    except RuntimeError as e:
        log.error("cannot bind unix:%s (%d bytes; unix socket paths max out at %d): %s",
                  sock, len(sock.encode()), MAX_UNIX_PATH, e)
        _exit(1)
    server.start()
    log.info("serving on unix:%s", sock)

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %s: exiting, leaving the domain to the next launcher",
                 signal.Signals(signum).name)
        supervisor.exit_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if args.fence_file:
        FenceWatch(path=args.fence_file, fence=supervisor.fence).start()
    supervisor.start()
    while not supervisor.exit_requested.wait(0.5):
        pass
    supervisor.board.close()  # ends WatchDomainStatus streams
    server.stop(grace=5).wait()  # in-flight Shutdown/Kill answers are delivered first
    try:
        os.unlink(sock)
    except FileNotFoundError:
        pass
    if session_mode and supervisor.finished:
        session.stop_daemons(vm_dir)  # the run is over: its daemons go with it
    log.info("launcher exiting")
    _exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
