"""Hostile input: hypothesis drives a live controller's public API with random and adversarial
messages (huge sizes, odd Unicode, path traversal, XML metacharacters, thousands of labels).

Every call must end with a status a client can act on (OK, INVALID_ARGUMENT, ALREADY_EXISTS,
NOT_FOUND) and a message; never INTERNAL or UNKNOWN. Afterwards the controller still runs and
leads, and everything it stored passes validation again and turns into well-formed domain XML
in which every user string reads back exactly (nothing unescaped).

No guest boots: there is no node, so every accepted VM stays Pending."""
from __future__ import annotations

import re
import string
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from prometheus_client.parser import text_string_to_metric_families

from corral import validation
from corral.v1 import vm_pb2
from launcher.domain_xml import QEMU_NS, DomainOptions, build_domain_xml
from tests.cluster import Cluster, free_port

# Hypothesis warns when it prints a failing example of megabytes: those are the point here.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
XML_META = "<>&'\"]]><![CDATA[&amp;&#0;<!--"
ACCEPTABLE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS,
              grpc.StatusCode.NOT_FOUND}

# -- strategies --------------------------------------------------------------------------------
odd_text = st.text(st.characters(codec="utf-8"), max_size=80)  # any code point protobuf can carry
dns_label = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
adversarial_words = st.sampled_from([
    "", ".", "..", "../../etc/passwd", "a/../b", "name\n", "name\x00", "\u202eevil", "ａｂｃ", "İ",
    "a" * 63, "a" * 64, "a" * 100_000, "-a", "a-", "a_b", "A", "x" + XML_META, XML_META, "\ufffe", "\ud7ff",
    "\x7f", "\x85", "\u2028", "0", "🐄",
])
bad_chars = st.sampled_from(["\n", "\r", "\x00", "\t", " ", "/", "..", "<", "&", "\"", "\u0130", "\u2028", "\ufeff",
                             "\ufffe", "A", "_", "."])


def near_miss(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A valid string with one bad character before, inside or after it."""
    return st.tuples(valid, bad_chars, st.integers(0, 2)).map(
        lambda t: (t[1] + t[0], t[0][: len(t[0]) // 2] + t[1] + t[0][len(t[0]) // 2:], t[0] + t[1])[t[2]])


names = st.one_of(dns_label, near_miss(dns_label), adversarial_words, odd_text)
label_keys = st.one_of(
    st.from_regex(r"\A([a-z0-9]([-a-z0-9.]{0,20}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?\Z"),
    near_miss(st.from_regex(r"\A[a-z0-9]{1,20}\Z")), adversarial_words, odd_text)
label_values = st.one_of(st.from_regex(r"\A([A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?)?\Z"),
                         near_miss(st.from_regex(r"\A[A-Za-z0-9]{1,20}\Z")), adversarial_words, odd_text)
many_labels = st.integers(0, 5000).map(lambda n: {f"k{i}": f"v{i}" for i in range(n)})
labels = st.one_of(st.dictionaries(label_keys, label_values, max_size=8), many_labels)

segment = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=12).filter(
    lambda s: s not in (".", ".."))
good_path = st.lists(segment, min_size=1, max_size=6).map(lambda parts: "/" + "/".join(parts))
bad_path = st.one_of(
    adversarial_words,
    near_miss(good_path),
    good_path.map(lambda p: p + "/../../etc/shadow"),
    good_path.map(lambda p: "/" + p),  # '//' at the start
    good_path.map(lambda p: p + "/./x"),
    good_path.map(lambda p: p + "\x00.img"),
    good_path.map(lambda p: p + "\n<disk/>"),
    good_path.map(lambda p: p + XML_META),
    good_path.map(lambda p: p.lstrip("/")),
    st.integers(4000, 20_000).map(lambda n: "/" + "a" * n),
    odd_text.map(lambda s: "/" + s),
)
paths = st.one_of(good_path, bad_path)
cmdlines = st.one_of(
    st.text(string.printable.strip("\t\n\r\x0b\x0c"), max_size=200),
    st.sampled_from(["console=ttyS0 " + XML_META, "a" * 4096, "a" * 4097, "b" * 1_000_000, "x\ny", "\x1b[2J"]),
    odd_text)
int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
vcpus = st.one_of(st.integers(-2, 300), int32)
memory = st.one_of(st.integers(-2, 5 * 1024 * 1024), int64)
enum_values = st.one_of(st.integers(0, 4), int32)


@st.composite
def vms(draw, *, name=names, path=paths, cmdline=cmdlines, label=labels, vcpu=vcpus, mib=memory,
        enum=enum_values, boots=("kernel", "disk", "none")):
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = draw(name)
    vm.metadata.labels.update(draw(label))
    if draw(st.booleans()):
        vm.metadata.uid = draw(odd_text)  # the server makes its own
        vm.metadata.resource_version = draw(int64)
    if "none" in boots and draw(st.integers(0, 9)) == 0:
        return vm  # no spec at all
    vm.spec.vcpus = draw(vcpu)
    vm.spec.memory_mib = draw(mib)
    boot = draw(st.sampled_from(boots))
    if boot == "kernel":
        vm.spec.boot.kernel.kernel_path = draw(path)
        vm.spec.boot.kernel.initrd_path = draw(st.one_of(st.just(""), path))
        vm.spec.boot.kernel.cmdline = draw(cmdline)
    elif boot == "disk":
        vm.spec.boot.disk.image_path = draw(path)
        vm.spec.boot.disk.format = draw(enum)
    vm.spec.node_selector.update(draw(label))
    vm.spec.run_strategy = draw(enum)
    if draw(st.booleans()):
        vm.status.phase = draw(enum_values)  # status is the server's: ignored
        vm.status.node_name = draw(names)
    return vm


valid_labels = st.dictionaries(st.from_regex(r"\A[a-z]([-a-z0-9.]{0,20}[a-z0-9])?\Z"),
                               st.from_regex(r"\A[A-Za-z0-9]{0,20}\Z"), max_size=64)
valid_vms = vms(name=dns_label, path=good_path, label=valid_labels, vcpu=st.integers(1, 256),
                mib=st.integers(16, 4 * 1024 * 1024), enum=st.integers(1, 2), boots=("kernel", "disk"),
                cmdline=st.one_of(st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=300),
                                  st.just("console=ttyS0 " + XML_META)))


@st.composite
def one_hostile_field(draw):
    """A valid VM but for one field: each check must hold on its own."""
    vm = draw(valid_vms)
    field = draw(st.sampled_from(["name", "label", "selector", "path", "cmdline", "vcpus", "memory", "enum"]))
    if field == "name":
        vm.metadata.name = draw(st.one_of(near_miss(dns_label), adversarial_words, odd_text))
    elif field == "label":
        vm.metadata.labels.update(draw(st.dictionaries(label_keys, label_values, min_size=1, max_size=3)))
    elif field == "selector":
        vm.spec.node_selector.update(draw(labels))
    elif field == "path":
        if vm.spec.boot.WhichOneof("source") == "disk":
            vm.spec.boot.disk.image_path = draw(bad_path)
        else:
            vm.spec.boot.kernel.initrd_path = draw(bad_path)
    elif field == "cmdline":
        vm.spec.boot.kernel.cmdline = draw(cmdlines)
    elif field == "vcpus":
        vm.spec.vcpus = draw(vcpus)
    elif field == "memory":
        vm.spec.memory_mib = draw(memory)
    else:
        vm.spec.run_strategy = draw(enum_values)
    return vm


# -- the live controller -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def controller(etcd, tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    made = Cluster(etcd=etcd, base=Path(base), prefix=f"/fuzz-{uuid.uuid4().hex[:8]}/", guest_dir=Path("/nonexistent"))
    metrics_address = f"127.0.0.1:{free_port()}"
    made.start_controller("c1", extra=["--metrics-listen", metrics_address])
    made.metrics_address = metrics_address
    yield made
    made.close()


def assert_harmless(vm: vm_pb2.VirtualMachine) -> None:
    """What may be stored, checked independently of corral.validation (a second opinion)."""
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", vm.metadata.name) and "\n" not in vm.metadata.name
    for mapping in (vm.metadata.labels, vm.spec.node_selector):
        assert len(mapping) <= 64
        for key, value in mapping.items():
            assert key.isascii() and value.isascii() and (key + value).isprintable() and len(value) <= 63
    kernel, disk = vm.spec.boot.kernel, vm.spec.boot.disk
    for path in (kernel.kernel_path, kernel.initrd_path, disk.image_path):
        if path:
            assert path.startswith("/") and len(path) <= 4096 and path.isprintable()
            assert not {".", "..", ""} & set(path.split("/")[1:]), path
    assert len(kernel.cmdline) <= 4096 and kernel.cmdline.isprintable()
    assert 1 <= vm.spec.vcpus <= 256 and 16 <= vm.spec.memory_mib <= 4 * 1024 * 1024
    assert vm.spec.run_strategy in vm_pb2.RunStrategy.values()
    if vm.spec.boot.WhichOneof("source") == "disk":
        assert disk.format in (vm_pb2.DISK_FORMAT_RAW, vm_pb2.DISK_FORMAT_QCOW2)


def call(method, request):
    """The status code and message of one call; fails the test on anything unclear."""
    try:
        method(request, timeout=20)
    except grpc.RpcError as exc:
        code, message = exc.code(), exc.details() or ""
    else:
        return grpc.StatusCode.OK, ""
    assert code in ACCEPTABLE, f"{code.name}: {message[:500]}"
    assert message.strip(), f"{code.name} without a message"
    assert len(message) < 20_000, f"a {len(message)}-character message"
    return code, message


def test_create_with_hostile_input(controller):
    stub = controller.vms

    accepted = []

    @FUZZ
    @given(vm=st.one_of(vms(), valid_vms, one_hostile_field(), one_hostile_field()))
    def create(vm):
        request = vm_pb2.CreateVirtualMachineRequest(virtual_machine=vm)
        code, message = call(stub.CreateVirtualMachine, request)
        accepted.append(code == grpc.StatusCode.OK)
        try:
            validation.validate_new_vm(vm)
            valid = True
        except validation.ValidationError:
            valid = False
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert not valid, f"refused a valid VM: {message}"
        elif code == grpc.StatusCode.OK:
            assert valid
            assert_harmless(vm)

    create()
    assert any(accepted), "the fuzzing stored nothing valid: the strategies are off"
    check_alive_leading_and_everything_stored_is_valid(controller)


def test_batch_create_with_hostile_input(controller):
    """A batch of hostile entries is refused with a status a client can act on, naming the
    entry at fault (or the batch's size); it is accepted only when every entry is valid and
    its names differ."""
    stub = controller.vms
    accepted = []

    @FUZZ  # (under gRPC's 4 MiB request limit: a larger call is RESOURCE_EXHAUSTED, tested above)
    @given(batch=st.lists(st.one_of(vms(), valid_vms, one_hostile_field()), min_size=1, max_size=6).filter(
        lambda batch: sum(vm.ByteSize() for vm in batch) < 3 * 1024 * 1024))
    def create(batch):
        request = vm_pb2.BatchCreateVirtualMachinesRequest(
            requests=[vm_pb2.CreateVirtualMachineRequest(virtual_machine=vm) for vm in batch])
        code, message = call(stub.BatchCreateVirtualMachines, request)
        accepted.append(code == grpc.StatusCode.OK)
        valid = True
        for vm in batch:
            try:
                validation.validate_new_vm(vm)
            except validation.ValidationError:
                valid = False
        names = [vm.metadata.name for vm in batch]
        if code == grpc.StatusCode.OK:
            assert valid and len(set(names)) == len(names)
            for vm in batch:
                assert_harmless(vm)
        else:
            assert "requests[" in message or "smaller batches" in message, message[:500]
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                assert not valid or len(set(names)) < len(names) or "smaller batches" in message, message[:500]

    create()
    assert any(accepted), "no batch was accepted: the strategies are off"
    check_alive_leading_and_everything_stored_is_valid(controller)


HOSTILE_STRINGS = ["", ".", "..", "../x", "x/../y", "x\n", "\nx", "x\r", "x\x00", "x\t", "x ", " x", "x\u2028",
                   "x\ufeff", "x\ufffe", "x\u0130", "ｘ", "X", "x_", "x.", "-x", "x-", "x" * 64, "x" * 5000,
                   "x<y>", "x&y", "x\"y", "x'y", "]]>", "/x/../y", "//x", "/x//y", "/x/./y", "/x/", "/x\n",
                   "/x\x00y", "/x\x1by", "/x\u200ey", "/" + "x" * 4096, "x" * 4097]
STRING_FIELDS = ["name", "label key", "label value", "selector key", "selector value", "kernel_path",
                 "initrd_path", "image_path", "cmdline"]


def with_field(field: str, value: str) -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = "x" + uuid.uuid4().hex[:12]
    vm.spec.vcpus, vm.spec.memory_mib = 1, 64
    if field == "image_path":
        vm.spec.boot.disk.image_path, vm.spec.boot.disk.format = value, vm_pb2.DISK_FORMAT_RAW
    else:
        vm.spec.boot.kernel.kernel_path = "/boot/vmlinuz"
    target = {"name": (vm.metadata, "name"), "kernel_path": (vm.spec.boot.kernel, "kernel_path"),
              "initrd_path": (vm.spec.boot.kernel, "initrd_path"), "image_path": (vm.spec.boot.disk, "image_path"),
              "cmdline": (vm.spec.boot.kernel, "cmdline")}
    if field in target:
        setattr(*target[field], value)
    else:
        mapping = vm.metadata.labels if field.startswith("label") else vm.spec.node_selector
        if field.endswith("key"):
            mapping[value] = "v"
        else:
            mapping["k"] = value
    return vm


def test_each_string_field_with_each_hostile_value(controller):
    """Systematic, beside the random search: every string field gets every classic bad value."""
    stub = controller.vms
    for field in STRING_FIELDS:
        for value in HOSTILE_STRINGS:
            vm = with_field(field, value)
            code, message = call(stub.CreateVirtualMachine, vm_pb2.CreateVirtualMachineRequest(virtual_machine=vm))
            if code == grpc.StatusCode.OK:
                assert_harmless(vm)
            else:
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, value, code)


def test_reads_and_deletes_with_hostile_names(controller):
    stub = controller.vms

    @settings(FUZZ, max_examples=100)
    @given(name=names, page_size=int32, token=st.one_of(odd_text, st.just("e30")),
           selector=st.one_of(odd_text, label_keys, st.sampled_from(["a=b,", "=", "!", "a!=", ",,", "a==b"])))
    def read(name, selector, page_size, token):
        call(stub.GetVirtualMachine, vm_pb2.GetVirtualMachineRequest(name=name))
        call(stub.ListVirtualMachines, vm_pb2.ListVirtualMachinesRequest(
            label_selector=selector, page_size=page_size, page_token=token))
        if name != "keep":
            call(stub.DeleteVirtualMachine, vm_pb2.DeleteVirtualMachineRequest(name=name + "-nope"))

    read()


def test_huge_request_is_refused_by_size(controller):
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = "huge"
    vm.spec.boot.kernel.cmdline = "a" * (5 * 1024 * 1024)
    with pytest.raises(grpc.RpcError) as refused:
        controller.vms.CreateVirtualMachine(vm_pb2.CreateVirtualMachineRequest(virtual_machine=vm), timeout=20)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def check_alive_leading_and_everything_stored_is_valid(controller) -> None:
    """After fuzzing: what this worker's tests stored in the module's controller (tests of a
    module may run on different workers, each with its own controller)."""
    process, _ = controller.controllers["c1"]
    assert process.poll() is None, "the controller died"
    stub = controller.vms
    stored, token = [], ""
    while True:
        page = stub.ListVirtualMachines(vm_pb2.ListVirtualMachinesRequest(page_size=1000, page_token=token), timeout=20)
        stored.extend(page.virtual_machines)
        token = page.next_page_token
        if not token:
            break
    for vm in stored:
        validation.validate_new_vm(vm)
        assert_harmless(vm)
        assert_xml_round_trips(vm, DomainOptions(emulation=True, serial_log_path="/var/lib/corral/vms/x/serial.log"))
    with urllib.request.urlopen(f"http://{controller.metrics_address}/metrics", timeout=5) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    assert [s.value for s in families["corral_leader"].samples] == [1.0]
    codes = {s.labels["code"] for s in families["corral_api_requests"].samples}
    assert not codes & {"INTERNAL", "UNKNOWN"}, codes
    errors = {s.labels["component"]: s.value for s in families["corral_reconcile_errors"].samples}
    assert errors.get("scheduler", 0) == 0


# -- domain XML: no server needed -----------------------------------------------------------------
def assert_xml_round_trips(vm: vm_pb2.VirtualMachine, options: DomainOptions) -> None:
    text = build_domain_xml(vm, options)
    domain = ET.fromstring(text)  # well-formed, or this raises
    assert domain.findtext("name") == vm.metadata.name
    assert domain.findtext("uuid") == str(uuid.UUID(vm.status.instance_uid or vm.metadata.uid))
    boot = vm.spec.boot
    if boot.WhichOneof("source") == "kernel":
        assert domain.findtext("os/kernel") == boot.kernel.kernel_path
        assert domain.findtext("os/initrd") == (boot.kernel.initrd_path or None)
        assert domain.findtext("os/cmdline") == (boot.kernel.cmdline or None)
    else:
        assert [s.get("file") for s in domain.iter("source")] == [boot.disk.image_path]
    assert domain.find("devices/serial/log").get("file") == options.serial_log_path
    # Exactly the elements Corral makes: a user string never turns into markup.
    assert {el.tag for el in domain.iter()} <= {
        "domain", "name", "uuid", "memory", "vcpu", "os", "type", "kernel", "initrd", "cmdline", "boot",
        "features", "acpi", "apic", "cpu", "clock", "on_poweroff", "on_reboot", "on_crash", "devices", "disk",
        "driver", "source", "target", "serial", "log", "console", "memballoon",
        # networks and the guest agent's channel (user networks: QEMU's command line, integers only)
        "channel", "interface", "mac", "model", f"{{{QEMU_NS}}}commandline", f"{{{QEMU_NS}}}arg",
        # the virtio-scsi controller every domain has; hotplug (max_vcpus, max_memory_mib): numbers only
        "controller", "maxMemory", "numa", "cell", "size", "node", "block", "requested"}


@FUZZ
@given(vm=valid_vms, uid=st.uuids(), emulation=st.booleans(),
       serial=st.one_of(good_path, good_path.map(lambda p: p + XML_META)))
def test_domain_xml_escapes_every_user_string(vm, uid, emulation, serial):
    try:
        validation.validate_new_vm(vm)
    except validation.ValidationError:
        return  # only what the API accepts reaches a launcher
    vm.metadata.uid = str(uid)
    assert_xml_round_trips(vm, DomainOptions(emulation=emulation, serial_log_path=serial))
