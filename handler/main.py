"""corral-handler: one per node. Registers the node, keeps its heartbeat lease, follows its
assignments from the controllers and runs one corral-launcher process per assigned VM.
Launchers run in their own sessions: stopping or killing the handler leaves guests running,
and the next handler adopts them."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from pydantic import ValidationError

from corral import logs
from corral.settings import HandlerSettings
from corral.store import Store, StoreError
from handler.agent import ControllerStubs, NodeAgent
from handler.assignments import AssignmentFollower
from handler.launchers import state_dir_problem
from handler.node import Heartbeat, node_record, register

log = logging.getLogger("corral.handler")


def parse_settings(argv: list[str] | None) -> HandlerSettings:
    parser = argparse.ArgumentParser(prog="corral-handler", description=__doc__)
    parser.add_argument("--node-name", help="this node's name (CORRAL_NODE_NAME)")
    parser.add_argument("--servers", help="controller HOST:PORT list (CORRAL_SERVERS)")
    parser.add_argument("--etcd-endpoints", help="comma-separated etcd URLs (CORRAL_ETCD_ENDPOINTS)")
    parser.add_argument("--etcd-prefix", help="key prefix (CORRAL_ETCD_PREFIX)")
    parser.add_argument("--state-dir", help="per-VM directories (CORRAL_STATE_DIR)")
    parser.add_argument("--capacity-vcpus", type=int, help="vCPUs offered (CORRAL_CAPACITY_VCPUS)")
    parser.add_argument("--capacity-memory-mib", type=int, help="MiB offered (CORRAL_CAPACITY_MEMORY_MIB)")
    parser.add_argument("--node-labels", help="KEY=VALUE,... (CORRAL_NODE_LABELS)")
    parser.add_argument("--heartbeat-seconds", type=int, help="node lease TTL (CORRAL_HEARTBEAT_SECONDS)")
    parser.add_argument("--emulation", choices=["auto", "on", "off"], help="TCG instead of KVM (CORRAL_EMULATION)")
    parser.add_argument("--shutdown-grace-seconds", type=int, help="ACPI grace before destroy")
    parser.add_argument("--launcher-command", help="command line of corral-launcher")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING (CORRAL_LOG_LEVEL)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return HandlerSettings(**overrides)
    except ValidationError as exc:
        parser.exit(2, f"corral-handler: invalid settings:\n{exc}\n")


def launcher_command(settings: HandlerSettings, state_dir: Path) -> list[str]:
    base = shlex.split(settings.launcher_command) if settings.launcher_command else [sys.executable, "-m", "launcher.main"]
    return [*base, "--emulation", settings.emulation,
            "--capabilities-cache", str(state_dir / "cache" / "qemu-capabilities")]


def hypervisor_name(emulation: str) -> str:
    if emulation == "on":
        return "qemu"
    if emulation == "off":
        return "kvm"
    return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    logs.setup(settings.log_level, name=f"handler[{settings.node_name}]")
    state_dir = Path(settings.state_dir).resolve()
    problem = state_dir_problem(state_dir)
    if problem:
        print(f"corral-handler: {problem}", file=sys.stderr)
        return 2
    (state_dir / "cache" / "qemu-capabilities").mkdir(parents=True, exist_ok=True)
    store = Store(endpoints=settings.etcd_endpoints, prefix=settings.etcd_prefix,
                  timeout=settings.etcd_timeout_seconds)
    record = node_record(name=settings.node_name, labels=settings.node_labels,
                         vcpus=settings.capacity_vcpus, memory_mib=settings.capacity_memory_mib,
                         hypervisor=hypervisor_name(settings.emulation))
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping (VMs keep running)", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    while not stop.is_set():
        try:
            register(store, record)
            break
        except StoreError as exc:
            log.warning("cannot register node %s yet: %s", settings.node_name, exc)
            stop.wait(1.0)
    heartbeat = Heartbeat(store=store, node_name=settings.node_name, ttl_seconds=settings.heartbeat_seconds)
    stubs = ControllerStubs(settings.servers)
    agent = NodeAgent(node_name=settings.node_name, state_dir=state_dir,
                      launcher_command=launcher_command(settings, state_dir), stubs=stubs,
                      grace_seconds=settings.shutdown_grace_seconds)
    agent.adopt_existing()
    follower = AssignmentFollower(agent=agent, stubs=stubs, node_name=settings.node_name)
    threads = [
        threading.Thread(target=heartbeat.run, args=(stop,), name="heartbeat", daemon=True),
        threading.Thread(target=follower.run, name="assignments", daemon=True),
        threading.Thread(target=agent.run, args=(stop,), name="reconcile", daemon=True),
    ]
    for thread in threads:
        thread.start()
    log.info("node %s handler started (state in %s)", settings.node_name, state_dir)
    stop.wait()
    follower.stop()
    heartbeat.release()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
