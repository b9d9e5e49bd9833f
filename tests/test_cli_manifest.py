"""Unit tests for manifest parsing and CLI printing (pure functions, no server)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp

from corral import manifest, printing
from corral.cli import main
from corral.v1 import meta_pb2, node_pb2, vm_pb2

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "vm.yaml"

GOOD = """\
apiVersion: corral.dev/v1
kind: VirtualMachine
metadata:
  name: demo
  labels: {app: demo}
spec:
  vcpus: 1
  memoryMib: 128
  nodeSelector: {}
  boot:
    kernel:
      kernelPath: /var/lib/corral/guest/vmlinuz
      initrdPath: /var/lib/corral/guest/initrd.gz
      cmdline: console=ttyS0 quiet
"""

NOW = datetime(2025, 1, 2, 12, 0, 0, tzinfo=timezone.utc)


def ts(dt: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt)
    return t


def with_changes(text: str, change) -> str:
    doc = yaml.safe_load(text)
    change(doc)
    return yaml.safe_dump(doc)


# --- manifests -------------------------------------------------------------------------------


def test_good_manifest():
    [vm] = manifest.parse_vms(GOOD, "vm.yaml")
    assert vm.metadata.name == "demo"
    assert dict(vm.metadata.labels) == {"app": "demo"}
    assert vm.spec.vcpus == 1 and vm.spec.memory_mib == 128
    assert vm.spec.boot.WhichOneof("source") == "kernel"
    assert vm.spec.boot.kernel.kernel_path == "/var/lib/corral/guest/vmlinuz"
    assert vm.spec.boot.kernel.initrd_path == "/var/lib/corral/guest/initrd.gz"
    assert vm.spec.boot.kernel.cmdline == "console=ttyS0 quiet"
    assert not vm.HasField("status")
    assert not vm.metadata.uid and not vm.metadata.resource_version


def test_example_file_is_the_documented_manifest():
    [vm] = manifest.parse_vms(EXAMPLE.read_text(), str(EXAMPLE))
    assert vm == manifest.parse_vms(GOOD)[0]


def test_snake_case_accepted():
    text = GOOD.replace("memoryMib", "memory_mib").replace("kernelPath", "kernel_path")
    [vm] = manifest.parse_vms(text)
    assert vm.spec.memory_mib == 128
    assert vm.spec.boot.kernel.kernel_path == "/var/lib/corral/guest/vmlinuz"


def test_disk_format_short_name():
    def disk(doc):
        doc["spec"]["boot"] = {"disk": {"imagePath": "/img.qcow2", "format": "qcow2"}}
    [vm] = manifest.parse_vms(with_changes(GOOD, disk))
    assert vm.spec.boot.disk.format == vm_pb2.DISK_FORMAT_QCOW2


@pytest.mark.parametrize("change, field", [
    (lambda d: d["spec"].update(gpus=1), "spec.gpus"),
    (lambda d: d["spec"]["boot"]["kernel"].update(kernelPaht="/x"), "spec.boot.kernel.kernelPaht"),
    (lambda d: d["metadata"].update(namespace="default"), "metadata.namespace"),
    (lambda d: d.update(extra=1), "extra"),
])
def test_unknown_field_named(change, field):
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse_vms(with_changes(GOOD, change), "vm.yaml")
    assert info.value.field == field
    assert str(info.value).startswith(f"vm.yaml: {field}: unknown field")


@pytest.mark.parametrize("change, field, words", [
    (lambda d: d.update(kind="Pod"), "kind", "unsupported kind 'Pod'"),
    (lambda d: d.pop("kind"), "kind", "missing kind"),
    (lambda d: d.update(apiVersion="v1"), "apiVersion", "unsupported apiVersion 'v1'"),
    (lambda d: d.pop("apiVersion"), "apiVersion", "missing apiVersion"),
    (lambda d: d["metadata"].pop("name"), "metadata.name", "missing name"),
    (lambda d: d.pop("spec"), "spec", "missing spec"),
])
def test_wrong_kind_or_version(change, field, words):
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse_vms(with_changes(GOOD, change), "vm.yaml")
    assert info.value.field == field
    assert words in str(info.value)


@pytest.mark.parametrize("change, field", [
    (lambda d: d.update(status={"phase": "VIRTUAL_MACHINE_PHASE_RUNNING"}), "status"),
    (lambda d: d["metadata"].update(uid="1234"), "metadata.uid"),
    (lambda d: d["metadata"].update(resourceVersion=7), "metadata.resourceVersion"),
    (lambda d: d["metadata"].update(resource_version=7), "metadata.resourceVersion"),
    (lambda d: d["metadata"].update(createTime="2025-01-01T00:00:00Z"), "metadata.createTime"),
    (lambda d: d["metadata"].update(deleteTime="2025-01-01T00:00:00Z"), "metadata.deleteTime"),
])
def test_server_set_fields_rejected(change, field):
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse_vms(with_changes(GOOD, change), "vm.yaml")
    assert info.value.field == field
    assert "server" in str(info.value)


def test_wrong_types_named():
    with pytest.raises(manifest.ManifestError, match=r"metadata\.labels\.tier: expected a string"):
        manifest.parse_vms(with_changes(GOOD, lambda d: d["metadata"]["labels"].update(tier=2)))
    with pytest.raises(manifest.ManifestError, match=r"spec\.vcpus: invalid literal"):
        manifest.parse_vms(with_changes(GOOD, lambda d: d["spec"].update(vcpus="many")))
    with pytest.raises(manifest.ManifestError, match=r"spec\.boot: expected a mapping"):
        manifest.parse_vms(with_changes(GOOD, lambda d: d["spec"].update(boot="kernel")))


def test_multi_document():
    second = GOOD.replace("name: demo", "name: demo-2")
    vms = manifest.parse_vms(f"---\n{GOOD}---\n{second}\n---\n", "two.yaml")
    assert [vm.metadata.name for vm in vms] == ["demo", "demo-2"]


def test_multi_document_error_names_document():
    bad = GOOD.replace("kind: VirtualMachine", "kind: Node")
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse_vms(f"{GOOD}---\n{bad}", "two.yaml")
    assert info.value.document == 1
    assert str(info.value).startswith("two.yaml (document 2): kind:")


@pytest.mark.parametrize("text, words", [
    ("", "no documents"),
    ("key: [unclosed\n", "invalid YAML at line"),
    ("- a\n- b\n", "expected a mapping, got list"),
])
def test_not_a_manifest(text, words):
    with pytest.raises(manifest.ManifestError, match=words):
        manifest.parse_vms(text, "x.yaml")


def test_duplicate_names_rejected():
    [vm] = manifest.parse_vms(GOOD)
    with pytest.raises(manifest.ManifestError, match="also defined in a.yaml"):
        manifest.check_unique_names([("a.yaml", vm), ("b.yaml", vm)])


def test_yaml_output_round_trips_as_manifest():
    [vm] = manifest.parse_vms(GOOD)
    stored = vm_pb2.VirtualMachine()
    stored.CopyFrom(vm)
    stored.metadata.uid = "u-1"
    stored.metadata.resource_version = 9
    stored.status.phase = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
    assert manifest.parse_vm(manifest.vm_to_manifest(stored)) == vm


def test_bad_manifest_sends_nothing(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD + "---\n" + GOOD.replace("vcpus: 1", "vcpus: 1\n  cpus: 2"))
    # Port 1 is closed: had the CLI tried to create "demo" it would print UNAVAILABLE.
    assert main(["--server", "127.0.0.1:1", "create", "-f", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: {path} (document 2): spec.cpus: unknown field "
                                   "'cpus' (known fields: vcpus, memoryMib, boot, nodeSelector, runStrategy, disks, ")
    assert "instanceType, preference" in captured.err


def test_unreachable_server_is_a_grpc_error(capsys):
    assert main(["--server", "127.0.0.1:1", "get", "vms"]) == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")


def test_usage_errors(capsys):
    assert main(["get", "pods"]) == 2
    assert "unknown resource type 'pods'" in capsys.readouterr().err
    assert main(["wait", "vm", "demo", "--for", "phase=Sleeping"]) == 2
    assert "unknown phase 'Sleeping'" in capsys.readouterr().err
    assert main(["--help"]) == 0


# --- printing --------------------------------------------------------------------------------


@pytest.mark.parametrize("phase, name", [
    (vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING, "Pending"),
    (vm_pb2.VIRTUAL_MACHINE_PHASE_SCHEDULED, "Scheduled"),
    (vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING, "Running"),
    (vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED, "Succeeded"),
    (vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED, "Failed"),
    (vm_pb2.VIRTUAL_MACHINE_PHASE_UNSPECIFIED, "Unknown"),
])
def test_phase_names(phase, name):
    assert printing.phase_name(phase) == name
    if phase:
        assert printing.parse_phase(name.lower()) == phase
        assert printing.parse_phase(vm_pb2.VirtualMachinePhase.Name(phase)) == phase


def test_node_status_names():
    assert printing.node_status(node_pb2.NODE_PHASE_READY) == "Ready"
    assert printing.node_status(node_pb2.NODE_PHASE_NOT_READY) == "NotReady"


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (59, "59s"), (119, "119s"), (200, "3m20s"), (300, "5m"), (900, "15m"),
    (3 * 3600 + 600, "3h10m"), (20 * 3600, "20h"), (3 * 86400 + 4 * 3600, "3d4h"),
    (40 * 86400, "40d"), (-5, "0s"),
])
def test_human_duration(seconds, text):
    assert printing.human_duration(seconds) == text


def test_small_formats():
    assert printing.format_memory(128) == "128Mi"
    assert printing.format_memory(2048) == "2Gi"
    assert printing.format_labels({"b": "2", "a": "1"}) == "a=1,b=2"
    assert printing.format_labels({}) == "<none>"
    assert printing.format_age(Timestamp(), NOW) == "<unknown>"
    assert printing.format_age(ts(NOW - timedelta(seconds=42)), NOW) == "42s"
    assert printing.format_time(ts(NOW)) == "2025-01-02T12:00:00Z"


def make_vm(name, phase, node="", labels=None, age=timedelta(minutes=5)):
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = name
    vm.metadata.uid = f"uid-{name}"
    vm.metadata.labels.update(labels or {})
    vm.metadata.create_time.CopyFrom(ts(NOW - age))
    vm.spec.vcpus = 1
    vm.spec.memory_mib = 128
    vm.status.phase = phase
    vm.status.node_name = node
    return vm


def test_vm_table():
    vms = [make_vm("demo", vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING, "node-1", {"app": "demo"}),
           make_vm("other-vm", vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING)]
    assert printing.vm_table(vms, now=NOW).splitlines() == [
        "NAME       STATUS     PHASE     NODE     VCPUS   MEMORY   AGE",
        "demo       Running    Running   node-1   1       128Mi    5m",
        "other-vm   Starting   Pending   <none>   1       128Mi    5m",
    ]
    wide = printing.vm_table(vms, wide=True, now=NOW).splitlines()
    assert wide[0].split() == ["NAME", "STATUS", "PHASE", "NODE", "VCPUS", "MEMORY", "AGE", "UID", "LABELS"]
    assert wide[1].split() == ["demo", "Running", "Running", "node-1", "1", "128Mi", "5m", "uid-demo",
                               "app=demo"]
    assert printing.vm_table([], now=NOW) == "NAME   STATUS   PHASE   NODE   VCPUS   MEMORY   AGE"


def test_node_table():
    node = node_pb2.Node()
    node.metadata.name = "node-1"
    node.status.phase = node_pb2.NODE_PHASE_READY
    node.status.capacity.vcpus = 4
    node.status.capacity.memory_mib = 4096
    node.status.allocated.vcpus = 1
    node.status.allocated.memory_mib = 128
    node.status.virtual_machine_count = 1
    node.status.registered_time.CopyFrom(ts(NOW - timedelta(hours=2)))
    assert [line.split() for line in printing.node_table([node], now=NOW).splitlines()] == [
        ["NAME", "STATUS", "VCPUS", "CPU", "RATIO", "MEMORY", "VMS", "AGE"],
        ["node-1", "Ready", "1/4", "1", "128Mi/4Gi", "1", "120m"],
    ]
    node.status.cpu_allocation_ratio = 10  # a handler that says: 4 CPUs offer 40 vCPUs
    node.status.allocatable.vcpus = 40
    node.status.allocatable.memory_mib = 4096
    assert printing.node_table([node], now=NOW).splitlines()[1].split() == [
        "node-1", "Ready", "1/40", "10", "128Mi/4Gi", "1", "120m"]


def test_json_output_is_camel_case_with_kind():
    vm = make_vm("demo", vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING, "node-1")
    obj = printing.to_dict(vm, "VirtualMachine")
    assert obj["apiVersion"] == "corral.dev/v1" and obj["kind"] == "VirtualMachine"
    assert obj["spec"]["memoryMib"] == "128"  # int64 is a string in proto JSON
    assert obj["status"]["nodeName"] == "node-1"
    listed = printing.list_dict([vm], "VirtualMachine")
    assert listed["kind"] == "VirtualMachineList" and len(listed["items"]) == 1


def test_describe_vm():
    [vm] = manifest.parse_vms(GOOD)
    vm.metadata.uid = "u-1"
    vm.metadata.create_time.CopyFrom(ts(NOW - timedelta(minutes=2)))
    vm.status.phase = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
    vm.status.node_name = "node-1"
    vm.status.serial_log_path = "/var/lib/corral/vms/demo/serial.log"
    vm.status.conditions.append(meta_pb2.Condition(
        type="Ready", status=True, reason="GuestRunning", message="the guest runs",
        last_transition_time=ts(NOW - timedelta(seconds=30))))
    for phase, ago in ((vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING, 120),
                       (vm_pb2.VIRTUAL_MACHINE_PHASE_SCHEDULED, 119),
                       (vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING, 30)):
        vm.status.phase_transitions.append(
            vm_pb2.PhaseTransition(phase=phase, time=ts(NOW - timedelta(seconds=ago))))
    text = printing.describe_vm(vm, now=NOW)
    for line in ("Name:", "Labels:", "app=demo", "UID:", "u-1", "Spec:", "vCPUs:", "128Mi",
                 "Kernel:", "/var/lib/corral/guest/vmlinuz", "console=ttyS0 quiet",
                 "Status:", "Running", "node-1", "Serial Log:",
                 "/var/lib/corral/vms/demo/serial.log", "Conditions:", "GuestRunning",
                 "the guest runs", "Phase Transitions:", "Scheduled", "+89s"):
        assert line in text, line
    assert "2025-01-02T11:58:00Z" in text


def test_describe_node():
    node = node_pb2.Node()
    node.metadata.name = "node-1"
    node.status.phase = node_pb2.NODE_PHASE_NOT_READY
    node.status.address = "10.0.0.1:7200"
    text = printing.describe_node(node, now=NOW)
    assert "node-1" in text and "NotReady" in text and "10.0.0.1:7200" in text


def test_every_example_manifest_parses_and_validates():
    """Every kind in examples/ parses and passes the checks apply makes before sending."""
    from corral.cli.apply import load_objects
    folders = sorted({str(path.parent) for path in EXAMPLE.parent.rglob("*.yaml")})
    objects = load_objects(folders)
    kinds = {manifest.kind_of(obj) for _, obj in objects}
    assert len(objects) >= 5 and {"VirtualMachine", "InstanceType", "Preference"} <= kinds


def test_strategies_may_be_written_as_kubevirt_does():
    text = EXAMPLE.read_text().replace("spec:\n", "spec:\n  runStrategy: RerunOnFailure\n"
                                       "  evictionStrategy: LiveMigrateIfPossible\n", 1)
    vm = manifest.parse_vms(text)[0]
    assert vm.spec.run_strategy == vm_pb2.RUN_STRATEGY_RERUN_ON_FAILURE
    assert vm.spec.eviction_strategy == vm_pb2.EVICTION_STRATEGY_LIVE_MIGRATE_IF_POSSIBLE
    with pytest.raises(manifest.ManifestError, match="runStrategy"):
        manifest.parse_vms(EXAMPLE.read_text().replace("spec:\n", "spec:\n  runStrategy: Sometimes\n", 1))


def test_describe_shows_status_runs_events_and_the_guest_agent():
    vm = make_vm("demo", vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING, "node-1", {})
    vm.status.printable_status = "Paused"
    vm.status.runs.add(instance_uid="0123456789abcdef", node_name="node-0", phase=vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED,
                       reason="Crashed", end_time=Timestamp(seconds=int(NOW.timestamp()) - 60))
    vm.status.events.add(reason="PauseRequested", message="pause requested", type=vm_pb2.EVENT_TYPE_NORMAL,
                         time=Timestamp(seconds=int(NOW.timestamp()) - 5))
    guest = vm.status.guest
    guest.agent_connected, guest.os_name, guest.os_version, guest.kernel_release = True, "Debian", "12", "6.1.0"
    guest.interfaces.add(name="eth0", mac_address="02:00:00:00:00:01", ip_addresses=["10.0.2.15/24"])
    text = printing.describe_vm(vm, now=NOW)
    for expected in ("Status:", "Paused", "Runs:", "01234567", "Crashed", "Events:", "PauseRequested",
                     "Guest Agent:", "connected", "Debian 12", "Interface eth0:", "10.0.2.15/24"):
        assert expected in text, (expected, text)
