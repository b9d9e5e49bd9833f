"""Metrics and structured logs: real controller and handler processes with /metrics enabled,
scraped over HTTP and parsed with prometheus_client's parser. No guest boots: VMs stay
Pending, or are placed on a node record this test keeps alive itself (no handler behind it)."""
from __future__ import annotations

import io
import json
import logging
import os
import threading
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyetcd import transactions as T

from corral import logs, metrics
from corral.resources import NODE_LEASES_FOLDER, NODES
from corral.store import Store
from corral.v1 import handler_pb2, handler_pb2_grpc, vm_pb2
from handler.node import node_record
from tests.cluster import Cluster, free_port, wait_for


# -- helpers ---------------------------------------------------------------------------------
def scrape(address: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one /metrics page."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def pending_vm(name: str, **selector: str) -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = name
    vm.spec.vcpus = 1
    vm.spec.memory_mib = 64
    vm.spec.boot.kernel.kernel_path = "/nonexistent/vmlinuz"
    vm.spec.node_selector.update(selector or {"corral.dev/test": "no-such-node"})
    return vm


@pytest.fixture
def bare_cluster(etcd, tmp_path):
    """Processes only: no test guest is built, nothing here boots one."""
    made = Cluster(etcd=etcd, base=Path(tmp_path), prefix=f"/t-{uuid.uuid4().hex[:8]}/",
                   guest_dir=Path("/nonexistent"))
    yield made
    made.close()


@pytest.fixture
def fake_node(bare_cluster):
    """A Ready node (record + lease key) kept alive by this test: the scheduler places VMs on
    it, nothing runs them."""
    store = Store(endpoints=[bare_cluster.etcd.endpoint], prefix=bare_cluster.prefix)
    store.put(NODES, node_record(name="fake1", labels={"corral.dev/test": "fake"}, vcpus=8,
                                 memory_mib=8192, hypervisor="qemu"))
    lease = store.grant_lease(10)
    store.txn([], [T.Put(store.raw_key(NODE_LEASES_FOLDER + "fake1"), b"fake1", lease=lease)])
    stop = threading.Event()

    def keep_alive() -> None:
        while not stop.wait(2):
            store.refresh_lease(lease)

    thread = threading.Thread(target=keep_alive, daemon=True)
    thread.start()
    yield "fake1"
    stop.set()
    thread.join(timeout=5)
    store.revoke_lease(lease)
    store.close()


# -- the controller --------------------------------------------------------------------------
def test_controller_metrics_and_vm_log_fields(bare_cluster, fake_node):
    c1_metrics = f"127.0.0.1:{free_port()}"
    bare_cluster.start_controller("c1", extra=["--metrics-listen", c1_metrics])
    wait_for(lambda: value(scrape(c1_metrics), "corral_leader") == 1, timeout=15, what="c1 to lead")

    created = [bare_cluster.create(pending_vm(name)) for name in ("waits-a", "waits-b")]
    placed = bare_cluster.create(pending_vm("placed", **{"corral.dev/test": "fake"}))
    with pytest.raises(grpc.RpcError) as refused:
        bare_cluster.create(pending_vm("Not_A_Name"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    scheduled = bare_cluster.wait_phase("placed", vm_pb2.VIRTUAL_MACHINE_PHASE_SCHEDULED, timeout=15)
    assert scheduled.status.node_name == fake_node
    # What the node's handler would say once the guest runs.
    handler = handler_pb2_grpc.HandlerServiceStub(bare_cluster.channel())
    handler.ReportVirtualMachineStatus(handler_pb2.ReportVirtualMachineStatusRequest(
        node_name=fake_node, name="placed", uid=placed.metadata.uid, instance_uid=scheduled.status.instance_uid,
        phase=vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING), timeout=10)

    # The VM gauges come from the replica's watch cache: a moment after the report, not at once.
    samples = wait_for(lambda: (s := scrape(c1_metrics)) and value(s, "corral_virtual_machines", phase="Running") == 1
                       and s, timeout=10, what="the Running VM in the gauges")
    assert value(samples, "corral_virtual_machines", phase="Pending") == 2
    assert value(samples, "corral_virtual_machines", phase="Running") == 1
    assert value(samples, "corral_virtual_machines", phase="Failed") == 0
    assert value(samples, "corral_leader") == 1
    assert value(samples, "corral_scheduling_seconds_count") == 1
    assert 0 <= value(samples, "corral_scheduling_seconds_sum") < 15
    assert value(samples, "corral_phase_transition_seconds_count", from_phase="Pending", to_phase="Scheduled") == 1
    assert value(samples, "corral_phase_transition_seconds_count", from_phase="Scheduled", to_phase="Running") == 1
    assert value(samples, "corral_phase_transition_seconds_bucket", from_phase="Scheduled", to_phase="Running",
                 le="+Inf") == 1
    create = "corral.v1.VirtualMachineService/CreateVirtualMachine"
    assert value(samples, "corral_api_requests_total", method=create, code="OK") == 3
    assert value(samples, "corral_api_requests_total", method=create, code="INVALID_ARGUMENT") == 1
    assert value(samples, "corral_api_requests_total", method="corral.v1.HandlerService/ReportVirtualMachineStatus",
                 code="OK") == 1
    assert value(samples, "corral_reconcile_errors_total", component="scheduler") == 0
    assert value(samples, "corral_node_virtual_machines", node=fake_node, state="active") is None  # handler-only

    # A standby replica reports the same store, and that it does not lead.
    c2_metrics = f"127.0.0.1:{free_port()}"
    bare_cluster.start_controller("c2", extra=["--metrics-listen", c2_metrics])
    standby = wait_for(lambda: (s := scrape(c2_metrics)) and value(s, "corral_leader") is not None
                       and value(s, "corral_virtual_machines", phase="Pending") == 2 and s,
                       timeout=10, what="c2 metrics with the store's VMs")
    assert value(standby, "corral_leader") == 0
    assert value(standby, "corral_virtual_machines", phase="Pending") == 2

    # Every line about a VM carries its name and uid (and node once it has one) as JSON fields.
    lines = [json.loads(line) for line in
             (bare_cluster.base / "controller-c1.log").read_text().splitlines() if line.startswith("{")]
    about = {(line.get("vm"), line.get("uid")) for line in lines if line["message"].startswith("created vm")}
    assert {(vm.metadata.name, vm.metadata.uid) for vm in created + [placed]} <= about
    scheduled_lines = [line for line in lines if line["message"].startswith("scheduled vm placed")]
    assert scheduled_lines and scheduled_lines[0]["node"] == fake_node
    assert scheduled_lines[0]["uid"] == placed.metadata.uid


# -- the handler -----------------------------------------------------------------------------
def test_handler_metrics_without_vms(bare_cluster):
    bare_cluster.start_controller("c1")
    handler_metrics = f"127.0.0.1:{free_port()}"
    bare_cluster.start_handler("n1", extra=["--metrics-listen", handler_metrics])
    samples = wait_for(lambda: scrape(handler_metrics), timeout=10, what="handler metrics")
    assert value(samples, "corral_node_virtual_machines", node="n1", state="active") == 0
    assert value(samples, "corral_node_virtual_machines", node="n1", state="finished") == 0
    assert value(samples, "corral_reconcile_errors_total", component="handler") == 0
    assert not [key for key in samples if key[0] == "corral_launcher_memory_bytes"]
    assert value(samples, "corral_leader") is None  # controller-only
    assert value(samples, "process_resident_memory_bytes") > 0
    lines = [json.loads(line) for line in
             (bare_cluster.base / "handler-n1.log").read_text().splitlines() if line.startswith("{")]
    assert lines and all(line.get("node") == "n1" for line in lines)


def test_node_collector_reads_launcher_pss():
    me = SimpleNamespace(status=SimpleNamespace(launcher_pid=os.getpid()), finished=False,
                         vm=SimpleNamespace(metadata=SimpleNamespace(name="alive")))
    starting = SimpleNamespace(status=None, finished=False, vm=SimpleNamespace(metadata=SimpleNamespace(name="new")))
    done = SimpleNamespace(status=SimpleNamespace(launcher_pid=os.getpid()), finished=True,
                           vm=SimpleNamespace(metadata=SimpleNamespace(name="done")))
    agent = SimpleNamespace(launchers={"u1": me, "u2": starting, "u3": done})
    families = {family.name: family for family in metrics.NodeCollector(agent, "n9").collect()}
    memory = {sample.labels["vm"]: sample.value for sample in families["corral_launcher_memory_bytes"].samples}
    assert set(memory) == {"alive"} and memory["alive"] > 1024 * 1024
    counts = {sample.labels["state"]: sample.value for sample in families["corral_node_virtual_machines"].samples}
    assert counts == {"active": 2, "finished": 1}


def test_handler_error_records_count_as_reconcile_errors():
    metrics.count_errors_of("tests.fake_handler", "fake")
    before = metrics.RECONCILE_ERRORS.labels("fake")._value.get()
    logging.getLogger("tests.fake_handler.agent").error("reconcile failed")
    logging.getLogger("tests.fake_handler.agent").warning("only a warning")
    assert metrics.RECONCILE_ERRORS.labels("fake")._value.get() == before + 1


# -- logs ------------------------------------------------------------------------------------
def test_json_lines_carry_vm_fields():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name, vm.metadata.uid, vm.status.node_name = "web-1", str(uuid.uuid4()), "n2"
    try:
        logs.set_fields(node="n1")
        logger.info("no vm here")
        logs.log_vm(logger, vm, "started %s", "ok", level=logging.WARNING)
        other = vm_pb2.VirtualMachine(metadata={"name": "ctx", "uid": "u-1"})
        with logs.vm_context(other):
            logger.info("inside")
        logger.info("explicit", extra=logs.vm_extra(other))
    finally:
        logs.set_fields(node="")
        logger.removeHandler(handler)
    first, second, third, fourth = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["node"] == "n1" and "vm" not in first
    assert (second["vm"], second["uid"], second["node"], second["level"], second["message"]) == \
        ("web-1", vm.metadata.uid, "n2", "warning", "started ok")
    assert (third["vm"], third["uid"], third["node"]) == ("ctx", "u-1", "n1")
    assert (fourth["vm"], fourth["uid"]) == ("ctx", "u-1")
    assert list(second)[:6] == ["time", "level", "logger", "vm", "uid", "node"]
