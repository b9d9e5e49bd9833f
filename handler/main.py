"""corral-handler: one per node. Registers the node, keeps its heartbeat lease, follows its
assignments from the controllers and runs one corral-launcher process per assigned VM.
Launchers run in their own sessions: stopping or killing the handler leaves guests running,
and the next handler adopts them. Under systemd (Type=notify) it reports READY=1 once
registered and running, WATCHDOG=1 from its main loop and STOPPING=1 on shutdown."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from corral import fence_guard, logs, metrics, tls
from corral.sdnotify import Watchdog, notify
from corral.settings import HandlerSettings, add_common_arguments, parse_daemon_settings
from corral.store import StoreError
from handler.isolation import setup as setup_isolation
from handler.agent import NodeAgent
from handler.control import ControllerStubs
from handler.devices import Roots
from handler.assignments import AssignmentFollower
from handler.control import NodeControl, Refused
from handler.fencing import FenceDeadline, InstanceLocks, WatchdogDevice, store_down_everywhere
from handler.launchers import state_dir_problem
from handler.migration_proxy import MigrationTLS
from handler.node import Heartbeat, node_record
from handler import userfaultfd
from handler.server import AgentServer

log = logging.getLogger("corral.handler")

FENCE_FILE = "fence-deadline"


def parse_settings(argv: list[str] | None) -> HandlerSettings:
    parser = argparse.ArgumentParser(prog="corral-handler", description=__doc__)
    parser.add_argument("--node-name", help="this node's name (CORRAL_NODE_NAME)")
    parser.add_argument("--servers", help="controller HOST:PORT list (CORRAL_SERVERS)")
    parser.add_argument("--state-dir", help="per-VM directories (CORRAL_STATE_DIR)")
    parser.add_argument("--capacity-vcpus", type=int, help="vCPUs offered (CORRAL_CAPACITY_VCPUS)")
    parser.add_argument("--capacity-memory-mib", type=int, help="MiB offered (CORRAL_CAPACITY_MEMORY_MIB)")
    parser.add_argument("--cpu-allocation-ratio", type=int,
                        help="vCPUs of VMs per host CPU (CORRAL_CPU_ALLOCATION_RATIO, default 10)")
    parser.add_argument("--node-labels", help="KEY=VALUE,... (CORRAL_NODE_LABELS)")
    parser.add_argument("--heartbeat-seconds", type=int, help="node lease TTL (CORRAL_HEARTBEAT_SECONDS)")
    parser.add_argument("--emulation", choices=["auto", "on", "off"], help="TCG instead of KVM (CORRAL_EMULATION)")
    parser.add_argument("--shutdown-grace-seconds", type=int, help="ACPI grace before destroy")
    parser.add_argument("--save-dir", help="where saved guests' memory goes (CORRAL_SAVE_DIR)")
    parser.add_argument("--launcher-command", help="command line of corral-launcher")
    parser.add_argument("--isolation", choices=["auto", "on", "off"],
                        help="each VM as its own user in its own cgroup (CORRAL_ISOLATION; auto: when root)")
    parser.add_argument("--watchdog-device", help="watchdog device petted while the lease is current")
    parser.add_argument("--fence-guard", help="library preloaded into QEMU that fences it at the node's "
                                              "deadline, or 'off' (CORRAL_FENCE_GUARD)")
    parser.add_argument("--image-roots", help="directories of ephemeral disks' base images, comma-separated "
                                              "(CORRAL_IMAGE_ROOTS)")
    parser.add_argument("--disk-roots", help="directories of persistent disks, comma-separated (CORRAL_DISK_ROOTS)")
    parser.add_argument("--allowed-bridges", help="bridges VMs may join, names or patterns, comma-separated "
                                                  "(CORRAL_ALLOWED_BRIDGES; default none)")
    parser.add_argument("--listen", help="HOST:PORT of the node agent gRPC server, for controllers (CORRAL_LISTEN)")
    parser.add_argument("--insecure", action="store_true", default=None,
                        help="serve the node agent and migration proxy in plaintext on a non-loopback address (CORRAL_INSECURE; "
                             "refused otherwise)")
    parser.add_argument("--advertise-address", help="HOST:PORT controllers dial for it (CORRAL_ADVERTISE_ADDRESS)")
    parser.add_argument("--migration-listen", help="HOST:PORT of the live-migration proxy (CORRAL_MIGRATION_LISTEN)")
    parser.add_argument("--migration-stream", choices=["tunnelled", "tls", "plaintext"],
                        help="with TLS files, how QEMU's stream crosses: tunnelled (default, no post-copy), tls "
                             "(QEMU's own, one-off credentials), plaintext (trusted networks only) "
                             "(CORRAL_MIGRATION_STREAM)")
    parser.add_argument("--libvirt-mode", choices=["embed", "session"],
                        help="libvirt per launcher: embed, or session (live migration) (CORRAL_LIBVIRT_MODE)")
    add_common_arguments(parser, daemon="handler")
    return parse_daemon_settings(parser, argv, HandlerSettings, daemon="handler")


def launcher_base(settings: HandlerSettings) -> list[str]:
    return shlex.split(settings.launcher_command) if settings.launcher_command else [sys.executable, "-m", "launcher.main"]


def launcher_command(settings: HandlerSettings, state_dir: Path, *, isolate: bool = False) -> list[str]:
    guard = [] if settings.fence_guard == fence_guard.OFF else ["--fence-guard", settings.fence_guard]
    return [*launcher_base(settings), "--emulation", settings.emulation, "--fence-file", str(state_dir / FENCE_FILE),
            *guard,
            "--capabilities-cache", str(state_dir / "cache" / "qemu-capabilities"), *(["--isolate"] if isolate else []),
            *(["--libvirt-mode", settings.libvirt_mode] if settings.libvirt_mode != "embed" else [])]


def hypervisor_name(emulation: str) -> str:
    if emulation == "on":
        return "qemu"
    if emulation == "off":
        return "kvm"
    return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    problems = settings.plaintext_problems()
    if problems:
        print("corral-handler: " + "\ncorral-handler: ".join(problems), file=sys.stderr)
        return 2
    logs.setup(settings.log_level, name=f"handler[{settings.node_name}]")
    logs.set_fields(node=settings.node_name)
    if settings.fence_guard == fence_guard.OFF:
        log.warning("fence guard OFF: a guest whose handler and launcher both die keeps running after its "
                    "node's lease expires, while the controller starts it elsewhere (two copies)")
    elif problem := fence_guard.problem(settings.fence_guard):
        print(f"corral-handler: {problem}", file=sys.stderr)
        return 2
    state_dir = Path(settings.state_dir).resolve()
    problem = state_dir_problem(state_dir)
    if problem:
        print(f"corral-handler: {problem}", file=sys.stderr)
        return 2
    os.umask(0o022)  # VM users read the fence file and the capabilities cache
    (state_dir / "cache" / "qemu-capabilities").mkdir(parents=True, exist_ok=True)
    try:
        isolation = setup_isolation(
            mode=settings.isolation, uid_base=settings.vm_uid_base, memory_overhead_mib=settings.vm_memory_overhead_mib,
            launcher_base=launcher_base(settings), state_dir=state_dir, cache_dir=state_dir / "cache" / "qemu-capabilities",
            warm_command=[*launcher_command(settings, state_dir), "--warm-cache", str(state_dir / "cache" / "probe")])
    except RuntimeError as exc:
        print(f"corral-handler: {exc}", file=sys.stderr)
        return 2
    if settings.libvirt_mode == "session" and isolation is None:
        print("corral-handler: libvirt_mode session runs a libvirt daemon as each VM's user: it needs "
              "per-VM isolation (isolation on or auto, as root)", file=sys.stderr)
        return 2
    try:
        credentials = (tls.channel_credentials(settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file)
                       if settings.uses_tls() else None)
    except tls.TLSConfigError as exc:
        print(f"corral-handler: {exc}", file=sys.stderr)
        return 2
    if credentials is None:
        log.warning("talking to the controllers WITHOUT TLS: use only on a trusted network")
    try:  # the migration proxy speaks mutual TLS with the node's certificate, as the node agent
        migration_tls = (MigrationTLS.from_files(settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file,
                                                 stream=settings.migration_stream)
                         if settings.tls_cert_file and settings.tls_ca_file else None)
    except tls.TLSConfigError as exc:
        print(f"corral-handler: {exc}", file=sys.stderr)
        return 2
    if migration_tls is not None and migration_tls.stream == "plaintext":
        log.warning("INSECURE migration stream (migration_stream: plaintext): guests' memory crosses the network "
                    "unencrypted and QEMU's incoming port is unauthenticated; for a migration network you trust "
                    "entirely (it allows post-copy)")
    post_copy = userfaultfd.check(tunnelled=migration_tls is not None and migration_tls.tunnels_stream)
    userfaultfd.log_check(post_copy)
    agent_server = AgentServer(settings)  # listening now: its address goes in the node record
    record = node_record(name=settings.node_name, labels=settings.node_labels,
                         vcpus=settings.capacity_vcpus, memory_mib=settings.capacity_memory_mib,
                         hypervisor=hypervisor_name(settings.emulation), address=agent_server.bind(),
                         cpu_allocation_ratio=settings.cpu_allocation_ratio,
                         post_copy_ready=post_copy.ready, post_copy_message=post_copy.message)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping (VMs keep running)", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # Nodes hold no store credentials: a controller writes the node's record, lease and locks.
    control = NodeControl(settings.servers, node_name=settings.node_name, credentials=credentials)
    while not stop.is_set():
        try:
            control.register(record)
            break
        except Refused as exc:
            print(f"corral-handler: the controllers refused node {settings.node_name}: {exc}", file=sys.stderr)
            return 2
        except StoreError as exc:
            log.warning("cannot register node %s yet: %s", settings.node_name, exc)
            stop.wait(1.0)
    watchdog_device = (WatchdogDevice(settings.watchdog_device, timeout_seconds=settings.heartbeat_seconds)
                       if settings.watchdog_device else None)
    deadline = FenceDeadline(str(state_dir / FENCE_FILE), watchdog=watchdog_device)
    stubs = ControllerStubs(settings.servers, credentials=credentials)
    agent_holder: list[NodeAgent] = []
    heartbeat = Heartbeat(
        control=control, node_name=settings.node_name, ttl_seconds=settings.heartbeat_seconds, deadline=deadline,
        outage_confirmed=lambda: store_down_everywhere(settings.servers, node_name=settings.node_name,
                                                       credentials=credentials),
        reclaim_guests=lambda: agent_holder and agent_holder[0].reclaim_guests())
    locks = InstanceLocks(control=control, node_name=settings.node_name, lease_id=lambda: heartbeat.lease_id)
    agent = NodeAgent(node_name=settings.node_name, state_dir=state_dir,
                      launcher_command=launcher_command(settings, state_dir, isolate=isolation is not None),
                      isolation=isolation, stubs=stubs,
                      grace_seconds=settings.shutdown_grace_seconds, locks=locks, deadline=deadline,
                      save_dir=Path(settings.save_dir) if settings.save_dir else state_dir / "saved",
                      device_roots=Roots(images=tuple(settings.image_roots), disks=tuple(settings.disk_roots)),
                      allowed_bridges=tuple(settings.allowed_bridges),
                      migration_listen=settings.migration_listen, migration_tls=migration_tls,
                      advertise_host=agent_server.address.rpartition(":")[0].strip("[]"))
    agent_holder.append(agent)
    # The first beat before anything else: launchers being adopted must see a current deadline.
    while not stop.is_set():
        try:
            heartbeat.beat_once()
            break
        except StoreError as exc:
            log.warning("cannot take the node lease yet: %s", exc)
            stop.wait(1.0)
    metrics.register_handler(agent, settings.node_name)
    metrics.serve(settings.metrics_listen)
    agent.adopt_existing()
    agent_server.start(agent)
    agent.spares.fill()
    follower = AssignmentFollower(agent=agent, stubs=stubs, node_name=settings.node_name)
    threads = [
        threading.Thread(target=heartbeat.run, args=(stop,), name="heartbeat", daemon=True),
        threading.Thread(target=follower.run, name="assignments", daemon=True),
        threading.Thread(target=agent.run, args=(stop,), name="reconcile", daemon=True),
    ]
    for thread in threads:
        thread.start()
    log.info("node %s handler started (state in %s)", settings.node_name, state_dir)
    notify(f"READY=1\nSTATUS=node {settings.node_name} registered")
    watchdog = Watchdog()
    while not stop.wait(watchdog.period):
        # Healthy while every loop runs; a dead one stops the pings and systemd restarts us
        # (launchers live in their own scopes or sessions: guests keep running).
        dead = [thread.name for thread in threads if not thread.is_alive()]
        watchdog.ping(healthy=not dead, status=f"node {settings.node_name}: " +
                      (f"{', '.join(dead)} loop stopped" if dead else "running"))
    notify("STOPPING=1\nSTATUS=stopping (VMs keep running)")
    follower.stop()
    agent_server.stop()
    agent.migrations.close()
    agent.spares.close()
    if watchdog_device is not None and not any(l.running() for l in agent.launchers.values() if not l.finished):
        watchdog_device.disarm()  # no guests here: nothing to fence, a stopped handler must not reset the node
    # The lease is NOT revoked: guests keep running while a restarted handler takes over in
    # time; if none does, they are fenced when the lease runs out.
    control.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
