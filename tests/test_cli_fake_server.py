"""The client and CLI against an in-process fake of the controller API (no etcd, no nodes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import yaml

from corral import manifest
from corral.cli import main
from corral.client import Client, UnexpectedPhase, WaitTimeout
from corral.v1 import meta_pb2, node_pb2, node_pb2_grpc, vm_pb2, vm_pb2_grpc

EXAMPLE = str(Path(__file__).resolve().parent.parent / "examples" / "vm.yaml")
RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING


class FakeApi(vm_pb2_grpc.VirtualMachineServiceServicer, node_pb2_grpc.NodeServiceServicer):
    """Just enough of the controller: a store with revisions, paging by 1, watch history."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.vms: dict[str, vm_pb2.VirtualMachine] = {}
        self.events: list[vm_pb2.WatchVirtualMachinesResponse] = []
        self.revision = 0
        self.created: list[str] = []
        self.node = node_pb2.Node()
        self.node.metadata.name = "node-1"
        self.node.status.phase = node_pb2.NODE_PHASE_READY
        self.node.status.capacity.vcpus = 4
        self.node.status.capacity.memory_mib = 4096

    def _record(self, kind: int, vm: vm_pb2.VirtualMachine) -> None:
        self.revision += 1
        if kind != meta_pb2.WATCH_EVENT_TYPE_DELETED:
            vm.metadata.resource_version = self.revision
        self.events.append(vm_pb2.WatchVirtualMachinesResponse(
            type=kind, virtual_machine=vm, resource_version=self.revision))
        self.cond.notify_all()

    def set_phase(self, name: str, phase: int) -> None:
        with self.cond:
            vm = self.vms[name]
            vm.status.phase = phase
            vm.status.phase_transitions.add(phase=phase).time.GetCurrentTime()
            self._record(meta_pb2.WATCH_EVENT_TYPE_MODIFIED, vm)

    def remove(self, name: str) -> None:
        with self.cond:
            self._record(meta_pb2.WATCH_EVENT_TYPE_DELETED, self.vms.pop(name))

    def CreateVirtualMachine(self, request, context):
        with self.cond:
            vm = vm_pb2.VirtualMachine()
            vm.CopyFrom(request.virtual_machine)
            if vm.metadata.name in self.vms:
                context.abort(grpc.StatusCode.ALREADY_EXISTS,
                              f'virtualmachine "{vm.metadata.name}" already exists')
            vm.metadata.uid = str(uuid.uuid4())
            vm.metadata.create_time.GetCurrentTime()
            vm.status.phase = vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING
            self.vms[vm.metadata.name] = vm
            self.created.append(vm.metadata.name)
            self._record(meta_pb2.WATCH_EVENT_TYPE_ADDED, vm)
            return vm_pb2.CreateVirtualMachineResponse(virtual_machine=vm)

    def GetVirtualMachine(self, request, context):
        with self.cond:
            if request.name not in self.vms:
                context.abort(grpc.StatusCode.NOT_FOUND,
                              f'virtualmachine "{request.name}" not found')
            return vm_pb2.GetVirtualMachineResponse(virtual_machine=self.vms[request.name])

    def ListVirtualMachines(self, request, context):
        with self.cond:
            names = sorted(self.vms)
            if request.label_selector:
                key, _, value = request.label_selector.partition("=")
                names = [n for n in names if self.vms[n].metadata.labels.get(key) == value]
            start = int(request.page_token or 0)
            page = names[start:start + 1]  # one per page: exercises the client's paging
            token = str(start + 1) if start + 1 < len(names) else ""
            return vm_pb2.ListVirtualMachinesResponse(
                virtual_machines=[self.vms[n] for n in page], next_page_token=token,
                resource_version=self.revision)

    def DeleteVirtualMachine(self, request, context):
        with self.cond:
            vm = self.vms.get(request.name)
            if vm is None:
                context.abort(grpc.StatusCode.NOT_FOUND,
                              f'virtualmachine "{request.name}" not found')
            vm.metadata.delete_time.GetCurrentTime()
            self._record(meta_pb2.WATCH_EVENT_TYPE_MODIFIED, vm)
        threading.Timer(0.3, self.remove, (request.name,)).start()
        return vm_pb2.DeleteVirtualMachineResponse(virtual_machine=vm)

    def WatchVirtualMachines(self, request, context):
        with self.cond:
            if request.resource_version == 0:
                backlog = [vm_pb2.WatchVirtualMachinesResponse(
                    type=meta_pb2.WATCH_EVENT_TYPE_ADDED, virtual_machine=vm,
                    resource_version=vm.metadata.resource_version) for vm in self.vms.values()]
                sent = len(self.events)
            else:
                backlog = []
                sent = sum(1 for e in self.events if e.resource_version <= request.resource_version)
        yield from backlog
        while context.is_active():
            with self.cond:
                self.cond.wait(0.05)
                new, sent = self.events[sent:], len(self.events)
            yield from new

    def ListNodes(self, request, context):
        return node_pb2.ListNodesResponse(nodes=[self.node])

    def GetNode(self, request, context):
        if request.name != "node-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f'node "{request.name}" not found')
        return node_pb2.GetNodeResponse(node=self.node)


@pytest.fixture
def api():
    fake = FakeApi()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    vm_pb2_grpc.add_VirtualMachineServiceServicer_to_server(fake, server)
    node_pb2_grpc.add_NodeServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    # A dead replica first: every call must fail over to the live one.
    fake.address = f"127.0.0.1:1,127.0.0.1:{port}"
    yield fake
    server.stop(None)


def corral(api, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--server", api.address, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_create_get_describe(api, capsys):
    assert corral(api, capsys, "create", "-f", EXAMPLE) == (0, "virtualmachine/demo created\n", "")
    code, out, err = corral(api, capsys, "create", "-f", EXAMPLE)
    assert code == 1 and err == 'error: ALREADY_EXISTS: virtualmachine "demo" already exists\n'

    code, out, _ = corral(api, capsys, "get", "vms")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["NAME", "STATUS", "PHASE", "NODE", "VCPUS", "MEMORY", "AGE"]
    assert lines[1].split()[:6] == ["demo", "Starting", "Pending", "<none>", "1", "128Mi"]

    code, out, _ = corral(api, capsys, "get", "virtualmachine", "demo", "-o", "json")
    obj = json.loads(out)
    assert obj["kind"] == "VirtualMachine" and obj["metadata"]["name"] == "demo"
    assert obj["spec"]["boot"]["kernel"]["cmdline"] == "console=ttyS0 quiet"
    code, out, _ = corral(api, capsys, "get", "vm/demo", "-o", "yaml")
    assert yaml.safe_load(out)["status"]["phase"] == "VIRTUAL_MACHINE_PHASE_PENDING"
    assert corral(api, capsys, "get", "vms", "-o", "name")[1] == "virtualmachine/demo\n"

    code, out, _ = corral(api, capsys, "describe", "vm", "demo")
    assert code == 0 and "Name:" in out and "Pending" in out and "Conditions:" in out

    code, out, err = corral(api, capsys, "get", "vm", "nope")
    assert (code, out, err) == (1, "", 'error: NOT_FOUND: virtualmachine "nope" not found\n')


def test_list_follows_pages(api, capsys):
    text = "".join(
        f"---\napiVersion: corral.dev/v1\nkind: VirtualMachine\nmetadata: {{name: vm-{i}, "
        f"labels: {{tier: {'web' if i % 2 else 'db'}}}}}\nspec: {{vcpus: 1, memoryMib: 64}}\n"
        for i in range(5))
    with Client(api.address.split(",")) as client:
        for vm in manifest.parse_vms(text):
            client.create_vm(vm)
        assert [vm.metadata.name for vm in client.list_vms()] == [f"vm-{i}" for i in range(5)]
        assert [vm.metadata.name for vm in client.list_vms("tier=web")] == ["vm-1", "vm-3"]
    code, out, _ = corral(api, capsys, "get", "vms", "-l", "tier=db", "-o", "name")
    assert out.split() == ["virtualmachine/vm-0", "virtualmachine/vm-2", "virtualmachine/vm-4"]


def test_wait_for_running_and_timeout(api, capsys):
    corral(api, capsys, "create", "-f", EXAMPLE)
    threading.Timer(0.3, api.set_phase, ("demo", vm_pb2.VIRTUAL_MACHINE_PHASE_SCHEDULED)).start()
    threading.Timer(0.6, api.set_phase, ("demo", RUNNING)).start()
    start = time.monotonic()
    code, out, err = corral(api, capsys, "wait", "vm", "demo", "--for", "phase=Running",
                            "--timeout", "10")
    assert (code, out, err) == (0, "virtualmachine/demo condition met\n", "")
    assert time.monotonic() - start < 5

    code, out, err = corral(api, capsys, "wait", "vm", "demo", "--for", "phase=Succeeded",
                            "--timeout", "0.5")
    assert code == 1
    assert err.startswith("error: timed out after 0.5s waiting for virtualmachine/demo")
    assert "current phase: Running" in err


def test_wait_stops_on_failure(api):
    with Client(api.address.split(",")) as client:
        client.create_vm(vm_pb2.VirtualMachine(metadata=meta_pb2.ObjectMeta(name="bad")))
        threading.Timer(0.2, api.set_phase,
                        ("bad", vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED)).start()
        with pytest.raises(UnexpectedPhase, match="reached phase Failed"):
            client.wait_for_phase("bad", [RUNNING], timeout=10)
        with pytest.raises(WaitTimeout):
            client.wait_for_phase("bad", [RUNNING], timeout=0.3, fail_on_terminal=False)


def test_delete_wait_and_nodes(api, capsys):
    corral(api, capsys, "create", "-f", EXAMPLE)
    code, out, err = corral(api, capsys, "delete", "vm", "demo", "--wait", "--timeout", "10")
    assert (code, out, err) == (0, "virtualmachine/demo deleted\n", "")
    assert "demo" not in api.vms
    code, out, err = corral(api, capsys, "delete", "vm", "demo")
    assert code == 1 and err.startswith("error: NOT_FOUND: ")

    code, out, _ = corral(api, capsys, "get", "nodes")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "VCPUS", "CPU", "RATIO", "MEMORY", "VMS", "AGE"]
    assert lines[1].split()[:6] == ["node-1", "Ready", "0/4", "1", "0Mi/4Gi", "0"]
    code, out, _ = corral(api, capsys, "describe", "node", "node-1")
    assert code == 0 and "node-1" in out and "Ready" in out


def test_runs_as_a_module(api):
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "corral.cli", "get", "nodes", "-o", "name"],
                          cwd=root, capture_output=True, text=True, timeout=60,
                          env={"CORRAL_SERVER": api.address, "PATH": "/usr/bin:/bin",
                               "CORRAL_CLIENT_CONFIG": os.devnull})  # not the user's contexts
    assert (done.returncode, done.stdout, done.stderr) == (0, "node/node-1\n", "")
