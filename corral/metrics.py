"""Prometheus metrics of the Corral daemons, served over HTTP at /metrics when a daemon is
given --metrics-listen HOST:PORT (CORRAL_METRICS_LISTEN).

Every name has the corral_ prefix and follows Prometheus' conventions (base units: seconds,
bytes; counters end in _total). What one daemon does not do stays absent or zero in its output:

controller
    corral_virtual_machines{phase}           VMs in the store by phase (read on each scrape)
    corral_phase_transition_seconds{from_phase,to_phase}
                                             time a VM spent in from_phase before to_phase
    corral_scheduling_seconds                Pending (creation or a new run) to assignment to a node
    corral_leader                            1 on the replica that leads, 0 elsewhere
    corral_api_requests_total{method,code}   gRPC calls served, by final status code
    corral_reconcile_errors_total{component} failed reconcile passes (scheduler, handler)
handler
    corral_node_virtual_machines{node,state} VMs with a directory on this node (active, finished)
    corral_launcher_memory_bytes{vm}         PSS of each launcher process (/proc/PID/smaps_rollup)
    corral_reconcile_errors_total{component} errors logged by the node's reconcile loop
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from corral import status as vm_status
from corral.v1 import vm_pb2

log = logging.getLogger(__name__)

disable_created_metrics()  # no *_created series next to every counter and histogram

#: Phase durations run from milliseconds (Pending -> Scheduled) to minutes (a slow boot).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# Made unregistered (observing them works anywhere); a daemon registers those it reports.
PHASE_TRANSITION_SECONDS = Histogram(
    "corral_phase_transition_seconds", "Time a VM spent in from_phase before entering to_phase.",
    ["from_phase", "to_phase"], buckets=DURATION_BUCKETS, registry=None)
SCHEDULING_SECONDS = Histogram(
    "corral_scheduling_seconds",
    "Time from a VM becoming Pending (its creation or a new run) to its assignment to a node.",
    buckets=DURATION_BUCKETS, registry=None)
RECONCILE_ERRORS = Counter(
    "corral_reconcile_errors", "Reconcile passes or steps that failed.", ["component"], registry=None)
LEADER = Gauge("corral_leader", "1 while this controller replica is the elected leader, else 0.",
               registry=None)
API_REQUESTS = Counter(
    "corral_api_requests", "gRPC requests served, by method and final status code.", ["method", "code"],
    registry=None)

PHASES = [vm_status.phase_name(value) for value in vm_pb2.VirtualMachinePhase.values()
          if value != vm_pb2.VIRTUAL_MACHINE_PHASE_UNSPECIFIED]


def serve(address: str) -> None:
    """Serve /metrics on HOST:PORT in a daemon thread; an empty address turns metrics off."""
    if not address:
        return
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0")
    log.info("serving Prometheus metrics on http://%s/metrics", address)


# -- observations made by the controller ---------------------------------------------------
def observe_phase_transition(vm: vm_pb2.VirtualMachine) -> None:
    """After a write that changed vm's phase: how long it stayed in the phase before."""
    transitions = vm.status.phase_transitions
    if len(transitions) < 2:
        return
    before, after = transitions[-2], transitions[-1]
    seconds = (after.time.ToNanoseconds() - before.time.ToNanoseconds()) / 1e9
    PHASE_TRANSITION_SECONDS.labels(vm_status.phase_name(before.phase),
                                    vm_status.phase_name(after.phase)).observe(max(seconds, 0.0))


def observe_scheduled(vm: vm_pb2.VirtualMachine) -> None:
    """After the scheduler stored vm's assignment to a node: the time since it became Pending
    (its creation, or the start of a new run)."""
    transitions = vm.status.phase_transitions
    if not transitions:
        return
    if len(transitions) >= 2 and transitions[-2].phase == vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING:
        since = transitions[-2].time
    elif vm.metadata.HasField("create_time"):
        since = vm.metadata.create_time
    else:
        return
    SCHEDULING_SECONDS.observe(max((transitions[-1].time.ToNanoseconds() - since.ToNanoseconds()) / 1e9, 0.0))
    observe_phase_transition(vm)


class VirtualMachineCollector(Collector):
    """corral_virtual_machines{phase}, counted from the store on each scrape, so every replica
    reports the same numbers whether it leads or not."""

    def __init__(self, list_vms: Callable[[], Iterable[vm_pb2.VirtualMachine]]) -> None:
        self.list_vms = list_vms

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            vms = list(self.list_vms())
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because etcd is away
            log.warning("metrics: cannot list VMs: %s", exc)
            return
        counts = dict.fromkeys(PHASES, 0)
        for vm in vms:
            name = vm_status.phase_name(vm.status.phase)
            counts[name] = counts.get(name, 0) + 1
        family = GaugeMetricFamily("corral_virtual_machines", "VirtualMachines in the store, by phase.",
                                   labels=["phase"])
        for phase, count in counts.items():
            family.add_metric([phase], count)
        yield family


_registered: set[int] = set()
_lock = threading.Lock()


def _register(*collectors: Collector) -> None:
    """Register on the default registry, once each (tests build several daemons in one process)."""
    with _lock:
        for collector in collectors:
            if id(collector) not in _registered:
                REGISTRY.register(collector)
                _registered.add(id(collector))


def register_controller(*, list_vms: Callable[[], Iterable[vm_pb2.VirtualMachine]],
                        is_leader: Callable[[], bool]) -> None:
    _register(VirtualMachineCollector(list_vms), PHASE_TRANSITION_SECONDS, SCHEDULING_SECONDS, LEADER,
              API_REQUESTS, RECONCILE_ERRORS)
    LEADER.set_function(lambda: 1.0 if is_leader() else 0.0)
    RECONCILE_ERRORS.labels("scheduler")  # present (at 0) before the first error


# -- the handler -----------------------------------------------------------------------------
def pss_bytes(pid: int) -> int | None:
    """Proportional set size of a process: its fair share of shared pages plus its own."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class NodeCollector(Collector):
    """Reads the node agent's launchers on each scrape (agent.launchers: uid -> Launcher)."""

    def __init__(self, agent, node_name: str) -> None:
        self.agent = agent
        self.node_name = node_name

    def collect(self) -> Iterator[GaugeMetricFamily]:
        launchers = list(dict(self.agent.launchers).values())
        counts = {"active": 0, "finished": 0}
        memory = GaugeMetricFamily("corral_launcher_memory_bytes",
                                   "Proportional set size (PSS) of each VM's launcher process.",
                                   labels=["vm"])
        for launcher in launchers:
            finished = launcher.finished
            counts["finished" if finished else "active"] += 1
            status = launcher.status
            pid = status.launcher_pid if status is not None else 0
            size = pss_bytes(pid) if pid > 0 and not finished else None
            if size is not None:
                memory.add_metric([launcher.vm.metadata.name], size)
        vms = GaugeMetricFamily("corral_node_virtual_machines",
                                "VMs with a directory on this node: active, or finished (guest ended).",
                                labels=["node", "state"])
        for state, count in counts.items():
            vms.add_metric([self.node_name, state], count)
        yield vms
        yield memory


class _ErrorCounter(logging.Handler):
    """Counts the ERROR records a component's loggers emit (its reconcile loop logs each
    failed pass or step with log.exception)."""

    def __init__(self, component: str) -> None:
        super().__init__(level=logging.ERROR)
        self.counter = RECONCILE_ERRORS.labels(component)

    def emit(self, record: logging.LogRecord) -> None:
        self.counter.inc()


def count_errors_of(logger_name: str, component: str) -> None:
    """corral_reconcile_errors_total{component} counts ERROR records of logger_name's tree."""
    logger = logging.getLogger(logger_name)
    RECONCILE_ERRORS.labels(component)
    if not any(isinstance(h, _ErrorCounter) for h in logger.handlers):
        logger.addHandler(_ErrorCounter(component))


def register_handler(agent, node_name: str) -> None:
    _register(NodeCollector(agent, node_name), RECONCILE_ERRORS)
    count_errors_of("handler", "handler")
