"""Mutual TLS between Corral's parts: the controller requires a client certificate signed by
its client CA; a node certificate (CN node:<name>) may only use the HandlerService for its own
node; a user certificate (CN admin) may use the API but not the HandlerService."""
from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest

from controller import auth
from corral import tls
from controller.node_agents import NodeAgents
from corral.store import Store
from corral.v1 import (handler_pb2, handler_pb2_grpc, meta_pb2, node_agent_pb2, node_agent_pb2_grpc, node_pb2,
                       node_pb2_grpc, vm_pb2, vm_pb2_grpc)
from tests.certs import make_ca
from tests.cluster import REPO, Cluster, wait_for


# -- the identity convention (pure functions) -----------------------------------------------------

def _ctx(cn: str | None = None, sans: tuple[str, ...] = (), secure: bool = True) -> dict:
    context = {"transport_security_type": [b"ssl" if secure else b"insecure"]}
    if cn is not None:
        context["x509_common_name"] = [cn.encode()]
    if sans:
        context["x509_subject_alternative_name"] = [san.encode() for san in sans]
    return context


@pytest.mark.parametrize("context,expected", [
    (_ctx("node:n1"), auth.Identity("node", "n1")),
    (_ctx("whatever", ("corral://node/n1", "n1.example")), auth.Identity("node", "n1")),
    (_ctx("node:n1", ("corral://node/n1",)), auth.Identity("node", "n1")),
    (_ctx("node:n1", ("corral://node/n2",)), auth.Identity("invalid", "n1, n2")),
    (_ctx("node:"), auth.Identity("invalid", "")),
    (_ctx("admin", ("corral://role/admin",)), auth.Identity("user", "admin", "admin")),
    (_ctx("alice", ("corral://role/viewer",)), auth.Identity("user", "alice", "viewer")),
    (_ctx("bob"), auth.Identity("user", "bob", "viewer")),  # no role: read only
    (_ctx("eve", ("corral://role/admin", "corral://role/viewer")), auth.Identity("invalid", "eve: roles admin, viewer")),
    (_ctx("eve", ("corral://role/root",)), auth.Identity("invalid", "eve: roles root")),
    (_ctx(secure=False), None),
])
def test_identity_of(context, expected):
    assert auth.identity_of(context) == expected


def test_node_and_service_rules():
    assert auth.node_refusal(_ctx("node:n1"), "n1") is None
    assert "only for that node" in auth.node_refusal(_ctx("node:n1"), "n2")
    assert "not a node certificate" in auth.node_refusal(_ctx("admin"), "n1")
    assert auth.node_refusal(_ctx(secure=False), "n2") is None  # plaintext: local use, no check
    create = "/corral.v1.VirtualMachineService/CreateVirtualMachine"
    watch = "/corral.v1.HandlerService/WatchAssignments"
    assert "may only use" in auth.service_refusal(_ctx("node:n1"), create)
    assert auth.service_refusal(_ctx("admin", ("corral://role/admin",)), create) is None
    assert "may only read" in auth.service_refusal(_ctx("bob"), create)
    assert auth.service_refusal(_ctx("bob"), "/corral.v1.VirtualMachineService/ListVirtualMachines") is None
    assert auth.service_refusal(_ctx("node:n1"), watch) is None
    assert "not a node certificate" in auth.service_refusal(_ctx("admin"), watch)
    assert auth.service_refusal(_ctx("node:n1"), "/grpc.health.v1.Health/Check") is None
    assert auth.service_refusal(_ctx(secure=False), create) is None


# -- a controller with mutual TLS ----------------------------------------------------------------

class TLSCluster(Cluster):
    """Controllers with mTLS (settings file per process); test clients use the admin cert."""

    def __init__(self, *, certs: dict, **kwargs) -> None:
        super().__init__(**kwargs)
        self.certs = certs
        self.admin = tls.channel_credentials(str(certs["ca"].cert), str(certs["admin"].cert),
                                             str(certs["admin"].key))

    def write_config(self, name: str, values: dict[str, str]) -> str:
        path = self.base / f"{name}.yaml"
        path.write_text("".join(f"{key}: {value}\n" for key, value in values.items()))
        return str(path)

    def start_tls_controller(self, name: str = "c1") -> str:
        config = self.write_config(f"controller-{name}", {
            "tls_cert_file": self.certs["server"].cert, "tls_key_file": self.certs["server"].key,
            "tls_client_ca_file": self.certs["ca"].cert})
        return self.start_controller(name, extra=["--config", config])

    def start_tls_handler(self, node: str, cert_name: str) -> None:
        config = self.write_config(f"handler-{node}", {
            "tls_ca_file": self.certs["ca"].cert, "tls_cert_file": self.certs[cert_name].cert,
            "tls_key_file": self.certs[cert_name].key})
        self.start_handler(node, vcpus=1, memory_mib=256, extra=["--config", config])

    def _answers(self, address: str, plaintext: bool) -> bool:
        with grpc.secure_channel(address, self.admin) as channel:
            grpc.channel_ready_future(channel).result(timeout=1)
        return True

    def secure_channel(self, cert_name: str | None, *, ca: str = "ca") -> grpc.Channel:
        address = next(iter(self.controllers.values()))[1]
        issued = self.certs.get(cert_name) if cert_name else None
        credentials = tls.channel_credentials(str(self.certs[ca].cert), str(issued.cert) if issued else None,
                                              str(issued.key) if issued else None)
        channel = grpc.secure_channel(address, credentials)
        self._channels.append(channel)
        return channel

    def channel(self) -> grpc.Channel:
        return self.secure_channel("admin")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    ca = make_ca(directory)
    other = make_ca(directory, "other-ca")
    return {
        "ca": ca,
        "server": ca.issue(directory, "server", "corral-controller", ips=("127.0.0.1",), dns=("localhost",),
                           uris=("corral://role/controller",)),
        "n1": ca.issue(directory, "n1", "node:n1", uris=("corral://node/n1",), ips=("127.0.0.1",),
                       dns=("n1.node.corral",)),
        "admin": ca.issue(directory, "admin", "admin", uris=("corral://role/admin",)),
        "viewer": ca.issue(directory, "viewer", "alice", uris=("corral://role/viewer",)),
        "no-role": ca.issue(directory, "no-role", "bob"),
        "stranger": other.issue(directory, "stranger", "admin"),
    }


@pytest.fixture(scope="module")
def tls_cluster(etcd, certs, tmp_path_factory):
    base = tmp_path_factory.mktemp("mtls")
    made = TLSCluster(certs=certs, etcd=etcd, base=base, prefix=f"/t-{uuid.uuid4().hex[:8]}/",
                      guest_dir=Path("/nonexistent"))
    made.start_tls_controller()
    yield made
    made.close()


def _refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _pending_vm(name: str) -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = name
    vm.spec.vcpus = 1
    vm.spec.memory_mib = 64
    vm.spec.boot.kernel.kernel_path = "/nonexistent/vmlinuz"
    vm.spec.node_selector["nowhere"] = "true"  # never scheduled: no guest boots
    return vm


def test_clients_without_a_trusted_certificate_are_refused(tls_cluster):
    address = next(iter(tls_cluster.controllers.values()))[1]
    request = vm_pb2.ListVirtualMachinesRequest()
    for channel in (tls_cluster.secure_channel(None),  # TLS, but no client certificate
                    tls_cluster.secure_channel("stranger", ca="ca"),  # signed by another CA
                    grpc.insecure_channel(address)):  # plaintext
        stub = vm_pb2_grpc.VirtualMachineServiceStub(channel)
        error = _refused(lambda: stub.ListVirtualMachines(request, timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        channel.close()


def test_node_certificate_acts_only_for_its_node(tls_cluster):
    handler = handler_pb2_grpc.HandlerServiceStub(tls_cluster.secure_channel("n1"))
    stream = handler.WatchAssignments(handler_pb2.WatchAssignmentsRequest(node_name="n1"), timeout=10)
    first = next(stream)
    assert first.type == handler_pb2.ASSIGNMENT_EVENT_TYPE_SYNCED
    stream.cancel()

    error = _refused(lambda: next(handler.WatchAssignments(handler_pb2.WatchAssignmentsRequest(node_name="n2"),
                                                        timeout=10)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may act only for that node" in error.details() and "'n2'" in error.details()

    report = handler_pb2.ReportVirtualMachineStatusRequest(node_name="n2", name="vm", uid="x")
    error = _refused(lambda: handler.ReportVirtualMachineStatus(report, timeout=10))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    release = handler_pb2.ReleaseVirtualMachineRequest(node_name="n2", name="vm", uid="x")
    assert _refused(lambda: handler.ReleaseVirtualMachine(release, timeout=10)).code() == grpc.StatusCode.PERMISSION_DENIED
    # For its own node the call passes authorization (and finds no such VM).
    report.node_name = "n1"
    assert _refused(lambda: handler.ReportVirtualMachineStatus(report, timeout=10)).code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("cert_name", ["viewer", "no-role"])
def test_a_viewer_reads_but_changes_nothing(tls_cluster, cert_name):
    """A read-only user (SAN URI corral://role/viewer, or no role at all) may get, list and
    watch; every create, delete, verb and console is PERMISSION_DENIED and changes nothing."""
    created = tls_cluster.create(_pending_vm(f"seen-by-{cert_name}"))
    get = vm_pb2.GetVirtualMachineRequest(name=created.metadata.name)
    existing = wait_for(  # settled: the scheduler has said why it cannot place it
        lambda: next((vm for vm in [tls_cluster.vms.GetVirtualMachine(get, timeout=10).virtual_machine]
                      if any(c.type == "Scheduled" for c in vm.status.conditions)), None),
        timeout=20, what="the scheduler's verdict")
    vms = vm_pb2_grpc.VirtualMachineServiceStub(tls_cluster.secure_channel(cert_name))
    assert vms.GetVirtualMachine(vm_pb2.GetVirtualMachineRequest(name=existing.metadata.name),
                                 timeout=10).virtual_machine.metadata.uid == existing.metadata.uid
    assert existing.metadata.name in [vm.metadata.name for vm in vms.ListVirtualMachines(
        vm_pb2.ListVirtualMachinesRequest(), timeout=10).virtual_machines]
    watch = vms.WatchVirtualMachines(vm_pb2.WatchVirtualMachinesRequest(), timeout=10)
    assert next(watch).type == meta_pb2.WATCH_EVENT_TYPE_ADDED
    watch.cancel()
    attempts = {
        "create": lambda: vms.CreateVirtualMachine(vm_pb2.CreateVirtualMachineRequest(
            virtual_machine=_pending_vm(f"by-{cert_name}")), timeout=10),
        "delete": lambda: vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(
            name=existing.metadata.name), timeout=10),
        "stop": lambda: vms.StopVirtualMachine(vm_pb2.StopVirtualMachineRequest(name=existing.metadata.name),
                                               timeout=10),
        "console": lambda: next(vms.OpenConsole(iter([vm_pb2.OpenConsoleRequest(name=existing.metadata.name)]),
                                                timeout=10)),
        "cordon": lambda: node_pb2_grpc.NodeServiceStub(tls_cluster.secure_channel(cert_name)).CordonNode(
            node_pb2.CordonNodeRequest(name="n1"), timeout=10),
    }
    for what, attempt in attempts.items():
        error = _refused(attempt)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (what, error)
        assert "may only read" in error.details() and "corral://role/admin" in error.details(), what
    after = tls_cluster.vms.GetVirtualMachine(vm_pb2.GetVirtualMachineRequest(name=existing.metadata.name),
                                              timeout=10).virtual_machine
    assert after.metadata.resource_version == existing.metadata.resource_version  # nothing changed
    names = [vm.metadata.name for vm in tls_cluster.vms.ListVirtualMachines(
        vm_pb2.ListVirtualMachinesRequest(), timeout=10).virtual_machines]
    assert f"by-{cert_name}" not in names


def test_one_certificate_cannot_hold_more_streams_than_its_limit(tls_cluster):
    """A node certificate opening streams over and over (a compromised node trying to stall
    the replica) gets RESOURCE_EXHAUSTED past its limit (4 by default); others are unaffected,
    and a closed stream frees its place."""
    handler = handler_pb2_grpc.HandlerServiceStub(tls_cluster.secure_channel("n1"))
    request = handler_pb2.WatchAssignmentsRequest(node_name="n1")
    held = []
    for _ in range(4):
        stream = handler.WatchAssignments(request, timeout=30)
        assert next(stream).type == handler_pb2.ASSIGNMENT_EVENT_TYPE_SYNCED
        held.append(stream)
    error = _refused(lambda: next(handler.WatchAssignments(request, timeout=10)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "node 'n1' already holds 4 streams" in error.details()
    admin = vm_pb2_grpc.VirtualMachineServiceStub(tls_cluster.secure_channel("admin"))
    assert admin.ListVirtualMachines(vm_pb2.ListVirtualMachinesRequest(), timeout=10) is not None
    watch = admin.WatchVirtualMachines(vm_pb2.WatchVirtualMachinesRequest(), timeout=10)
    tls_cluster.create(_pending_vm("limits-probe"))
    assert any(event.virtual_machine.metadata.name == "limits-probe" for event in _take(watch, 50))
    watch.cancel()
    held.pop().cancel()
    wait_for(lambda: next(handler.WatchAssignments(request, timeout=10)).type
             == handler_pb2.ASSIGNMENT_EVENT_TYPE_SYNCED, timeout=10, what="a freed place")
    for stream in held:
        stream.cancel()


def _take(stream, count: int):
    for index, event in enumerate(stream):
        yield event
        if index + 1 >= count or event.virtual_machine.metadata.name == "limits-probe":
            return


def test_node_certificate_cannot_use_the_api_and_users_cannot_act_as_nodes(tls_cluster):
    vms = vm_pb2_grpc.VirtualMachineServiceStub(tls_cluster.secure_channel("n1"))
    request = vm_pb2.CreateVirtualMachineRequest(virtual_machine=_pending_vm("from-node"))
    error = _refused(lambda: vms.CreateVirtualMachine(request, timeout=10))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "node 'n1'" in error.details()
    error = _refused(lambda: vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="x"), timeout=10))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    handler = handler_pb2_grpc.HandlerServiceStub(tls_cluster.secure_channel("admin"))
    error = _refused(lambda: next(handler.WatchAssignments(handler_pb2.WatchAssignmentsRequest(node_name="n1"),
                                                        timeout=10)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not a node certificate" in error.details()


def test_cli_with_an_admin_certificate(tls_cluster, certs):
    tls_cluster.create(_pending_vm("cli-vm"))
    address = next(iter(tls_cluster.controllers.values()))[1]
    env = tls_cluster.env()
    cli = [sys.executable, "-m", "corral.cli", "--server", address]
    flags = ["--ca-file", str(certs["ca"].cert), "--cert-file", str(certs["admin"].cert),
             "--key-file", str(certs["admin"].key)]
    done = subprocess.run([*cli, *flags, "get", "vms", "-o", "name"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "cli-vm" in done.stdout
    # The same from the environment.
    env.update(CORRAL_TLS_CA_FILE=str(certs["ca"].cert), CORRAL_TLS_CERT_FILE=str(certs["admin"].cert),
               CORRAL_TLS_KEY_FILE=str(certs["admin"].key))
    done = subprocess.run([*cli, "get", "vm", "cli-vm", "-o", "name"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    # A node certificate is refused with a message saying why.
    env.update(CORRAL_TLS_CERT_FILE=str(certs["n1"].cert), CORRAL_TLS_KEY_FILE=str(certs["n1"].key))
    done = subprocess.run([*cli, "get", "vms"], env=env, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "PERMISSION_DENIED" in done.stderr, done.stderr
    # A missing file is named before anything is sent.
    done = subprocess.run([*cli, "--ca-file", "/nonexistent/ca.pem", "get", "vms"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "/nonexistent/ca.pem" in done.stderr, done.stderr


def test_handler_with_its_node_certificate_registers_and_follows_its_stream(tls_cluster):
    tls_cluster.start_tls_handler("n1", "n1")  # waits until the node is Ready
    node = tls_cluster.nodes.GetNode(node_pb2.GetNodeRequest(name="n1"), timeout=5).node
    assert node.status.phase == node_pb2.NODE_PHASE_READY
    log = tls_cluster.base / "controller-c1.log"
    wait_for(lambda: "node n1 follows its" in log.read_text(), timeout=15,
             what="the handler's assignment stream")
    assert "PERMISSION_DENIED" not in (tls_cluster.base / "handler-n1.log").read_text()


def test_node_agent_serves_mutual_tls_to_controllers_and_users_only(tls_cluster, certs):
    """The handler's NodeAgentService: TLS with the node's certificate, client certificates
    from the CA required, node certificates refused; the controller dials it with its own."""
    if "n1" not in tls_cluster.handlers:
        tls_cluster.start_tls_handler("n1", "n1")
    address = tls_cluster.nodes.GetNode(node_pb2.GetNodeRequest(name="n1"), timeout=5).node.status.address
    request = node_agent_pb2.PauseInstanceRequest(name="vm", instance_uid=str(uuid.uuid4()))

    def call(credentials) -> grpc.RpcError:
        with (grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)) as channel:
            return _refused(lambda: node_agent_pb2_grpc.NodeAgentServiceStub(channel).PauseInstance(request, timeout=10))

    def creds(name: str | None) -> grpc.ChannelCredentials:
        issued = certs[name] if name else None
        return tls.channel_credentials(str(certs["ca"].cert), str(issued.cert) if issued else None,
                                       str(issued.key) if issued else None)

    assert call(creds("admin")).code() == grpc.StatusCode.NOT_FOUND  # through: no such run
    refused = call(creds("n1"))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and "node 'n1'" in refused.details()
    for reader in ("viewer", "no-role"):  # a read-only user may not pause a guest on the node either
        refused = call(creds(reader))
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and "(viewer)" in refused.details()
    for credentials in (creds(None), None):  # no client certificate; plaintext
        assert call(credentials).code() == grpc.StatusCode.UNAVAILABLE
    # What controller/main.py gives the controller: its certificate, trusting the client CA.
    agents = NodeAgents(Store(endpoints=[tls_cluster.etcd.endpoint], prefix=tls_cluster.prefix),
                        tls.channel_credentials(str(certs["ca"].cert), str(certs["server"].cert),
                                                str(certs["server"].key)))
    try:
        assert _refused(lambda: agents.stub("n1").PauseInstance(request, timeout=10)).code() == grpc.StatusCode.NOT_FOUND
        # A node record pointing at n1's handler under another node's name (a node answering
        # for another): the controller dials "n2" there and refuses n1's certificate.
        impostor = node_agent_pb2_grpc.NodeAgentServiceStub(agents.channel(address, "n2"))
        error = _refused(lambda: impostor.PauseInstance(request, timeout=10))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    finally:
        agents.close()
        agents.store.close()


def test_controller_refuses_partial_tls_settings(tmp_path, certs):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
           "CORRAL_TLS_CERT_FILE": str(certs["server"].cert)}
    done = subprocess.run([sys.executable, "-m", "controller.main"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "tls_cert_file, tls_key_file and tls_client_ca_file together" in done.stderr
