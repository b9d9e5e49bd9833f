"""Real processes for integration tests: an etcd member, controllers and handlers on
loopback, each test in its own etcd key prefix and state directories."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from corral.v1 import node_pb2, node_pb2_grpc, vm_pb2, vm_pb2_grpc

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_subnets_taken = 0


def private_subnet() -> int:
    """A third octet no other test running now uses for its network namespaces: each pytest-xdist
    worker has its own block of 20 (tests in one worker run one after another)."""
    global _subnets_taken
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    _subnets_taken += 1
    return 10 + (int(worker) if worker.isdigit() else 0) % 12 * 20 + _subnets_taken % 20


def wait_for(predicate: Callable[[], object], *, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error!r})" if last_error else ""))


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains text (launchers, QEMU of one state dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if text.encode() in handle.read():
                    found.append(int(entry))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


def qemu_pid_for(uid: str) -> int | None:
    for pid in pids_mentioning(uid):
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if "qemu-system" in exe:
            return pid
    return None


class Etcd:
    def __init__(self, base: Path) -> None:
        self.client_port, self.peer_port = free_port(), free_port()
        self.data_dir = base / "etcd"
        self.endpoint = f"http://127.0.0.1:{self.client_port}"
        self.listen_urls = self.endpoint
        self.log = open(base / "etcd.log", "ab")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["etcd", "--data-dir", str(self.data_dir), "--name", "test",
             "--listen-client-urls", self.listen_urls, "--advertise-client-urls", self.endpoint,
             "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
             "--initial-cluster", f"test=http://127.0.0.1:{self.peer_port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._healthy, timeout=20, what="etcd to serve")

    def _healthy(self) -> bool:
        """etcd answers its health check (an open port alone is not a member that serves)."""
        import json  # noqa: PLC0415
        import urllib.request  # noqa: PLC0415
        with urllib.request.urlopen(f"http://127.0.0.1:{self.client_port}/health", timeout=1) as answer:
            return json.loads(answer.read()).get("health") == "true"

    def stop(self) -> None:
        if self.process:
            self.process.kill()
            self.process.wait()


class Cluster:
    """Controllers and handlers of one test, sharing the session's etcd under a fresh prefix."""

    def __init__(self, *, etcd: Etcd, base: Path, prefix: str, guest_dir: Path) -> None:
        self.etcd = etcd
        self.base = base
        self.prefix = prefix
        self.guest_dir = guest_dir
        self.controllers: dict[str, tuple[subprocess.Popen, str]] = {}
        self.handlers: dict[str, subprocess.Popen] = {}
        self.handler_args: dict[str, list[str]] = {}
        self._channels: list[grpc.Channel] = []
        self.preferred = ""  # the controller clients talk to, when set
        # QEMU's sockets live below the VM directories, and unix socket paths are short.
        self.node_root = Path(tempfile.mkdtemp(prefix="corral-", dir="/tmp"))
        os.chmod(self.node_root, 0o755)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env["CORRAL_ETCD_ENDPOINTS"] = self.etcd.endpoint
        env["CORRAL_ETCD_PREFIX"] = self.prefix
        env["CORRAL_LOG_LEVEL"] = "INFO"
        return env

    def start_controller(self, name: str = "c1", *, lease_seconds: int = 3, extra: list[str] | None = None,
                         listen: str = "") -> str:
        address = listen or f"127.0.0.1:{free_port()}"
        log = open(self.base / f"controller-{name}.log", "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "controller.main", "--listen", address, "--replica-id", name,
             "--leader-lease-seconds", str(lease_seconds), *(extra or [])],
            env=self.env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.controllers[name] = (process, address)
        plaintext = "--config" not in (extra or [])
        wait_for(lambda: self._serving(address, process, plaintext), timeout=20, what=f"controller {name} to serve")
        return address

    def _serving(self, address: str, process: subprocess.Popen, plaintext: bool) -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the controller exited with {process.returncode} (see its log)")
        return self._answers(address, plaintext)

    def _answers(self, address: str, plaintext: bool) -> bool:
        """The controller answers on its address. Over plaintext its health service must name
        the VM API: another test's server (a handler, a launcher) can take a port free_port()
        gave out before the controller binds it, and would answer anything else."""
        with grpc.insecure_channel(address) as channel:
            if plaintext:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="corral.v1.VirtualMachineService"), timeout=1)
                return answer.status == health_pb2.HealthCheckResponse.SERVING
            grpc.channel_ready_future(channel).result(timeout=1)
        return True

    @property
    def servers(self) -> str:
        return ",".join(address for _, address in self.controllers.values())

    def state_dir(self, node: str) -> Path:
        return self.node_root / node

    def start_handler(self, node: str, *, vcpus: int = 4, memory_mib: int = 2048, labels: str = "",
                      extra: list[str] | None = None, wrapper: list[str] | None = None) -> None:
        args = self.handler_args.get(node) or [
            "--node-name", node, "--servers", self.servers, "--state-dir", str(self.state_dir(node)),
            "--emulation", "on", "--capacity-vcpus", str(vcpus), "--capacity-memory-mib", str(memory_mib),
            "--shutdown-grace-seconds", "1", "--listen", "127.0.0.1:0", "--migration-listen", "127.0.0.1:0",
            # Kernels and initrds must lie inside the image roots (a later --image-roots wins).
            "--image-roots", str(self.guest_dir),
            *(["--node-labels", labels] if labels else []),
            *(extra or [])]
        self.handler_args[node] = args
        log = open(self.base / f"handler-{node}.log", "ab")
        env = self.env()
        # Nodes hold no store credentials: a handler that still needed etcd would fail here.
        env["CORRAL_ETCD_ENDPOINTS"] = "http://127.0.0.1:9"
        self.handlers[node] = subprocess.Popen(
            [*(wrapper or []), sys.executable, "-m", "handler.main", *args],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.node_ready(node), timeout=20, what=f"node {node} to be Ready")

    def kill_handler(self, node: str) -> None:
        process = self.handlers.pop(node)
        process.send_signal(signal.SIGKILL)
        process.wait()

    # -- clients ----------------------------------------------------------------------------
    def channel(self) -> grpc.Channel:
        """A channel to the preferred controller (or the first one started)."""
        name = self.preferred if self.preferred in self.controllers else next(iter(self.controllers))
        address = self.controllers[name][1]
        channel = grpc.insecure_channel(address)
        self._channels.append(channel)
        return channel

    @property
    def vms(self) -> vm_pb2_grpc.VirtualMachineServiceStub:
        return vm_pb2_grpc.VirtualMachineServiceStub(self.channel())

    @property
    def nodes(self) -> node_pb2_grpc.NodeServiceStub:
        return node_pb2_grpc.NodeServiceStub(self.channel())

    def node_ready(self, node: str) -> bool:
        response = self.nodes.GetNode(node_pb2.GetNodeRequest(name=node), timeout=5)
        return response.node.status.phase == node_pb2.NODE_PHASE_READY

    def guest_vm(self, name: str, *, vcpus: int = 1, memory_mib: int = 128,
                 node_selector: dict[str, str] | None = None) -> vm_pb2.VirtualMachine:
        vm = vm_pb2.VirtualMachine()
        vm.metadata.name = name
        vm.spec.vcpus = vcpus
        vm.spec.memory_mib = memory_mib
        vm.spec.boot.kernel.kernel_path = str(self.guest_dir / "vmlinuz")
        vm.spec.boot.kernel.initrd_path = str(self.guest_dir / "initrd.gz")
        # no_timer_check: on a loaded host TCG can fail the kernel's early IO-APIC timer check (a panic).
        vm.spec.boot.kernel.cmdline = "console=ttyS0 quiet no_timer_check"
        vm.spec.node_selector.update(node_selector or {})
        return vm

    def create(self, vm: vm_pb2.VirtualMachine) -> vm_pb2.VirtualMachine:
        return self.vms.CreateVirtualMachine(vm_pb2.CreateVirtualMachineRequest(virtual_machine=vm),
                                             timeout=10).virtual_machine

    def get(self, name: str) -> vm_pb2.VirtualMachine:
        return self.vms.GetVirtualMachine(vm_pb2.GetVirtualMachineRequest(name=name), timeout=10).virtual_machine

    def wait_phase(self, name: str, phase: int, *, timeout: float = 60) -> vm_pb2.VirtualMachine:
        return wait_for(lambda: (vm := self.get(name)).status.phase == phase and vm,
                        timeout=timeout, what=f"vm {name} to reach {vm_pb2.VirtualMachinePhase.Name(phase)}")

    # -- teardown ---------------------------------------------------------------------------
    def close(self) -> None:
        for process in list(self.handlers.values()) + [p for p, _ in self.controllers.values()]:
            process.kill()
            process.wait()
        for channel in self._channels:
            channel.close()
        # Launchers and QEMU outlive handlers by design: end this test's ones here.
        for pid in pids_mentioning(str(self.node_root)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        remove_vm_cgroups(self.node_root)
        shutil.rmtree(self.node_root, ignore_errors=True)


def simulated_vm(name: str, *, label: tuple[str, str], memory_mib: int) -> vm_pb2.VirtualMachine:
    """A VM for simulated nodes (corral-simnodes): its kernel is never read."""
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = name
    vm.metadata.labels[label[0]] = label[1]
    vm.spec.vcpus = 1
    vm.spec.memory_mib = memory_mib
    vm.spec.boot.kernel.kernel_path = "/boot/vmlinuz-simulated"
    return vm


def leader_of(cluster: Cluster) -> tuple[str, int] | None:
    """(replica id, fencing token) of the current leader, from etcd."""
    from corral.resources import LEADER_KEY
    from corral.store import Store
    store = Store(endpoints=[cluster.etcd.endpoint], prefix=cluster.prefix)
    try:
        response = store.range(store.raw_key(LEADER_KEY))
        if not response.kvs:
            return None
        return response.kvs[0].value.decode(), response.kvs[0].create_revision
    finally:
        store.close()


def leader_name(cluster: Cluster) -> str:
    """The replica holding the leader key ("" while none does)."""
    leader = leader_of(cluster)
    return leader[0] if leader else ""


@contextlib.contextmanager
def simulated_nodes(cluster: Cluster, count: int, log_path: Path) -> Iterator[subprocess.Popen]:
    """A corral-simnodes process with COUNT nodes following the cluster's controllers (10 s
    heartbeat leases), logging to log_path; stopped on leaving."""
    with open(log_path, "ab") as log:
        sim = subprocess.Popen(
            [sys.executable, "-m", "handler.simnodes", "--count", str(count), "--servers", cluster.servers,
             "--heartbeat-seconds", "10"],
            cwd=REPO, env=cluster.env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        yield sim
    finally:
        sim.send_signal(signal.SIGTERM)
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()


def remove_vm_cgroups(node_root: Path) -> None:
    """The per-VM cgroups handlers made (handler/isolation.py) for this test's VMs."""
    from handler.isolation import Cgroups, detect_layout
    cgroups = Cgroups(detect_layout())
    for vm_file in node_root.glob("*/vms/*/vm.binpb"):
        vm = vm_pb2.VirtualMachine()
        try:
            vm.ParseFromString(vm_file.read_bytes())
        except Exception:  # noqa: BLE001 - half-written: nothing to clean
            continue
        cgroups.remove(vm.status.instance_uid or vm.metadata.uid)
