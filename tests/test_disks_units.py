"""Disks and cloud-init without guests: API validation, manifests, the domain XML, the node's
path and image checks (pure), and the handler's preparation with real qemu-img/genisoimage."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from corral import manifest
from corral.v1 import vm_pb2
from corral.validation import ValidationError, validate_new_vm
from handler.devices import (DeviceError, Roots, RunDevices, image_problem, inside, overlay_command, readable_by,
                             resolve_under, seed_command, seed_files)
from launcher.domain_xml import DomainOptions, build_domain_xml, cloud_init_seed_path, disk_target, ephemeral_disk_path

UID = "6c4b7d1e-0f5e-4a8e-9c1e-2f7a1d3b9e01"
RAW, QCOW2 = vm_pb2.DISK_FORMAT_RAW, vm_pb2.DISK_FORMAT_QCOW2
needs_tools = pytest.mark.skipif(not (shutil.which("qemu-img") and shutil.which("genisoimage")),
                                 reason="needs qemu-img and genisoimage")


def make_vm() -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = "vm-a"
    vm.metadata.uid = UID
    vm.spec.vcpus = 1
    vm.spec.memory_mib = 128
    vm.spec.boot.kernel.kernel_path = "/guest/vmlinuz"
    return vm


def add_disk(vm: vm_pb2.VirtualMachine, name: str, *, path: str = "", base: str = "", fmt: int = RAW,
             read_only: bool = False) -> vm_pb2.Disk:
    disk = vm.spec.disks.add(name=name, read_only=read_only)
    if base:
        disk.ephemeral.base_image_path = base
        disk.ephemeral.base_format = fmt
    else:
        disk.persistent.path = path
        disk.persistent.format = fmt
    return disk


def problems(vm: vm_pb2.VirtualMachine) -> str:
    with pytest.raises(ValidationError) as caught:
        validate_new_vm(vm)
    return str(caught.value)


# -- API validation -------------------------------------------------------------------------
def test_valid_disks_and_cloud_init_pass() -> None:
    vm = make_vm()
    add_disk(vm, "scratch", base="/images/base.img")
    add_disk(vm, "data", path="/disks/data.qcow2", fmt=QCOW2, read_only=True)
    vm.spec.cloud_init.user_data = "#cloud-config\n"
    validate_new_vm(vm)


@pytest.mark.parametrize("mutate, expected", [
    (lambda vm: add_disk(vm, "data", path="/disks/a", fmt=vm_pb2.DISK_FORMAT_UNSPECIFIED),
     "spec.disks[0].persistent.format must be given (RAW or QCOW2)"),
    (lambda vm: add_disk(vm, "data", base="/images/a", fmt=vm_pb2.DISK_FORMAT_UNSPECIFIED),
     "spec.disks[0].ephemeral.base_format must be given"),
    (lambda vm: add_disk(vm, "data", path="disks/a"), "spec.disks[0].persistent.path 'disks/a' must be an absolute path"),
    (lambda vm: add_disk(vm, "data", path="/disks/../etc/shadow"), "must be normalised"),
    (lambda vm: add_disk(vm, "data", path="/"), "spec.disks[0].persistent.path '/' is the root directory"),
    (lambda vm: setattr(vm.spec.boot.kernel, "kernel_path", "/"), "kernel_path '/' is the root directory"),
    (lambda vm: add_disk(vm, "Data", path="/disks/a"), "spec.disks[0].name 'Data' is not a DNS-1123 label"),
    (lambda vm: add_disk(vm, "a" * 21, path="/disks/a"), "is longer than 20 characters"),
    (lambda vm: vm.spec.disks.add(name="empty"), "spec.disks[0] needs a source"),
    (lambda vm: (add_disk(vm, "d", path="/disks/a"), add_disk(vm, "d", path="/disks/b")),
     "spec.disks[1].name 'd' is used by another disk"),
    (lambda vm: (add_disk(vm, "a", path="/disks/a"), add_disk(vm, "b", path="/disks/a")),
     "spec.disks[1].persistent.path '/disks/a' is attached twice"),
    (lambda vm: [add_disk(vm, f"d{i}", base="/images/a") for i in range(17)], "at most 16 are allowed"),
    (lambda vm: setattr(vm.spec.cloud_init, "user_data", "x" * (64 * 1024 + 1)),
     "spec.cloud_init.user_data is 65537 bytes; at most 64 KiB"),
    (lambda vm: setattr(vm.spec.cloud_init, "network_data", "é" * (8 * 1024 + 1)),
     "spec.cloud_init.network_data is 16386 bytes; at most 16 KiB"),
])
def test_bad_disks_and_cloud_init_are_named(mutate, expected) -> None:
    vm = make_vm()
    mutate(vm)
    assert expected in problems(vm)


def test_manifests_accept_disks_and_cloud_init() -> None:
    repo = Path(__file__).resolve().parent.parent
    for name in ("vm-disks.yaml", "vm-cloud-init.yaml"):
        for vm in manifest.parse_vms((repo / "examples" / name).read_text(), name):
            validate_new_vm(vm)
    vm = manifest.parse_vms((repo / "examples" / "vm-disks.yaml").read_text())[0]
    assert [d.name for d in vm.spec.disks] == ["scratch", "data", "reference"]
    assert vm.spec.disks[0].ephemeral.base_format == RAW
    assert vm.spec.disks[1].persistent.format == QCOW2
    assert vm.spec.disks[2].read_only


def test_manifest_names_an_unknown_disk_field() -> None:
    text = ("apiVersion: corral.dev/v1\nkind: VirtualMachine\nmetadata: {name: a}\n"
            "spec: {vcpus: 1, memoryMib: 64, boot: {kernel: {kernelPath: /k}}, "
            "disks: [{name: d, persistent: {path: /d, format: raw, backing: /x}}]}\n")
    with pytest.raises(manifest.ManifestError, match=r"spec\.disks\[0\]\.persistent\.backing"):
        manifest.parse_vms(text)


# -- domain XML -------------------------------------------------------------------------------
def test_disk_targets_skip_the_boot_disk() -> None:
    assert [disk_target(i) for i in (0, 1, 24, 25)] == ["vdb", "vdc", "vdz", "vdaa"]


def test_domain_xml_disks_and_seed() -> None:
    vm = make_vm()
    add_disk(vm, "scratch", base="/images/base.qcow2", fmt=QCOW2)
    add_disk(vm, "data", path="/disks/data.img")
    add_disk(vm, "ref", path="/dev/sdz", fmt=QCOW2, read_only=True)
    vm.spec.cloud_init.user_data = "hi"
    options = DomainOptions(emulation=True, serial_log_path="/r/serial.log", run_dir="/r",
                            block_devices=frozenset({"/dev/sdz"}))
    disks = ET.fromstring(build_domain_xml(vm, options)).findall("devices/disk")
    got = [(d.get("type"), d.find("driver").get("type"), d.find("source").attrib, d.find("target").get("dev"),
            d.findtext("serial"), d.find("readonly") is not None) for d in disks]
    assert got == [
        ("file", "qcow2", {"file": ephemeral_disk_path("/r", "scratch")}, "vdb", "scratch", False),
        ("file", "raw", {"file": "/disks/data.img"}, "vdc", "data", False),
        ("block", "qcow2", {"dev": "/dev/sdz"}, "vdd", "ref", True),
        ("file", "raw", {"file": cloud_init_seed_path("/r")}, "vde", None, True),
    ]
    assert ephemeral_disk_path("/r", "scratch") == "/r/disk-scratch.qcow2"


def test_domain_xml_escapes_and_refuses() -> None:
    vm = make_vm()
    add_disk(vm, "data", path="/disks/a'\"<b>&.img")
    xml = build_domain_xml(vm, DomainOptions(emulation=True, serial_log_path="/s", run_dir="/r"))
    assert ET.fromstring(xml).find("devices/disk/source").get("file") == "/disks/a'\"<b>&.img"
    with pytest.raises(ValueError, match="run's directory"):
        build_domain_xml(vm, DomainOptions(emulation=True, serial_log_path="/s"))
    vm.spec.disks[0].name = "../x"
    with pytest.raises(ValueError, match="not a DNS label"):
        build_domain_xml(vm, DomainOptions(emulation=True, serial_log_path="/s", run_dir="/r"))


# -- node checks (pure) ---------------------------------------------------------------------
def test_inside() -> None:
    assert inside("/srv/disks/a", "/srv/disks")
    assert inside("/srv/disks/a", "/srv/disks/")
    assert inside("/srv/disks", "/srv/disks")
    assert not inside("/srv/disks2/a", "/srv/disks")
    assert not inside("/srv", "/srv/disks")


@pytest.mark.parametrize("info, fmt, expected", [
    ({"format": "raw"}, "raw", None),
    ({"format": "qcow2", "format-specific": {"type": "qcow2", "data": {"compat": "1.1"}}}, "qcow2", None),
    ({"format": "raw"}, "qcow2", "is not qcow2"),
    ({"format": "qcow2", "backing-filename": "/etc/shadow"}, "qcow2", "has a backing file ('/etc/shadow')"),
    ({"format": "qcow2", "format-specific": {"data": {"data-file": "/dev/sda"}}}, "qcow2", "has a qcow2 data-file"),
])
def test_image_problem(info, fmt, expected) -> None:
    problem = image_problem(info, fmt)
    assert problem == expected if expected is None else expected in problem


def test_seed_files_and_commands() -> None:
    vm = make_vm()
    vm.spec.cloud_init.user_data = "#cloud-config\n"
    files = seed_files(vm)
    assert sorted(files) == ["meta-data", "user-data"]
    assert json.loads(files["meta-data"]) == {"instance-id": UID, "local-hostname": "vm-a"}
    vm.spec.cloud_init.network_data = "version: 2\n"
    assert seed_files(vm)["network-config"] == b"version: 2\n"
    assert overlay_command("/i/b", "raw", "/r/o") == ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                                                      "-b", "/i/b", "/r/o"]
    assert seed_command("/o.iso", ["/s/user-data"])[-1] == "/s/user-data"
    assert "cidata" in seed_command("/o.iso", [])


# -- node checks and preparation, real files --------------------------------------------------
@pytest.fixture
def node(tmp_path: Path) -> dict[str, Path]:
    dirs = {name: tmp_path / name for name in ("images", "disks", "state", "run", "elsewhere")}
    for path in dirs.values():
        path.mkdir()
    (dirs["images"] / "vmlinuz").write_bytes(b"kernel")
    os.chmod(dirs["images"] / "vmlinuz", 0o644)
    return dirs


def node_vm(node: dict[str, Path]) -> vm_pb2.VirtualMachine:
    """make_vm() booting the node's kernel (inside its image roots)."""
    vm = make_vm()
    vm.spec.boot.kernel.kernel_path = str(node["images"] / "vmlinuz")
    return vm


def devices(node: dict[str, Path]) -> RunDevices:
    return RunDevices(roots=Roots(images=(str(node["images"]),), disks=(str(node["disks"]),)),
                      run_dir=node["run"], scratch_parent=node["state"], owner=None)


def test_resolve_under_follows_links_only_inside_roots(node) -> None:
    (node["disks"] / "real.img").write_bytes(b"\0" * 512)
    (node["elsewhere"] / "secret").write_bytes(b"x")
    os.symlink(node["disks"] / "real.img", node["disks"] / "alias.img")
    os.symlink(node["elsewhere"] / "secret", node["disks"] / "escape.img")
    roots = (str(node["disks"]),)
    assert resolve_under(str(node["disks"] / "alias.img"), roots, "disk") == str(node["disks"] / "real.img")
    with pytest.raises(DeviceError, match="outside this node's allowed directories .* resolves to"):
        resolve_under(str(node["disks"] / "escape.img"), roots, "disk")
    with pytest.raises(DeviceError, match="does not exist"):
        resolve_under(str(node["disks"] / "missing.img"), roots, "disk")
    with pytest.raises(DeviceError, match="neither a regular file nor a block device"):
        resolve_under(str(node["disks"]), roots, "disk")


@needs_tools
def test_prepare_makes_overlay_and_seed(node) -> None:
    base = node["images"] / "base.img"
    base.write_bytes(b"\1" * 1024 * 1024)
    (node["disks"] / "data.img").write_bytes(b"\0" * 1024 * 1024)
    vm = node_vm(node)
    add_disk(vm, "scratch", base=str(base))
    add_disk(vm, "data", path=str(node["disks"] / "data.img"))
    vm.spec.cloud_init.user_data = "#!/bin/sh\necho hi\n"
    vm.spec.cloud_init.network_data = "version: 2\n"
    devices(node).prepare(vm)
    overlay = ephemeral_disk_path(str(node["run"]), "scratch")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2", overlay],
                                     capture_output=True, check=True).stdout)
    assert info["backing-filename"] == str(base) and info["backing-filename-format"] == "raw"
    seed = cloud_init_seed_path(str(node["run"]))
    header = subprocess.run(["isoinfo", "-d", "-i", seed], capture_output=True, text=True, check=True).stdout
    assert "Volume id: cidata" in header
    listing = subprocess.run(["isoinfo", "-R", "-f", "-i", seed], capture_output=True, text=True, check=True).stdout
    assert sorted(listing.split()) == ["/meta-data", "/network-config", "/user-data"]
    assert not list(node["state"].iterdir()), "the scratch directory is left behind"


@needs_tools
@pytest.mark.parametrize("make, expected", [
    (lambda d, o: subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(o / "secret"),
                                  str(d / "x.qcow2")], check=True), "has a backing file"),
    (lambda d, o: subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={o / 'secret'}",
                                  str(d / "x.qcow2"), "1M"], check=True), "has a qcow2 data-file"),
    (lambda d, o: subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(d / "x.qcow2"), "1M"], check=True),
     "qemu-img failed"),
])
def test_prepare_refuses_unsafe_images(node, make, expected) -> None:
    (node["elsewhere"] / "secret").write_bytes(b"\0" * 1024 * 1024)
    make(node["disks"], node["elsewhere"])
    vm = node_vm(node)
    add_disk(vm, "data", path=str(node["disks"] / "x.qcow2"), fmt=QCOW2)
    with pytest.raises(DeviceError, match=expected):
        devices(node).prepare(vm)


def test_readable_by() -> None:
    def st(mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
        return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))
    assert readable_by(st(0o644), 200000, {200000})
    assert not readable_by(st(0o640), 200000, {200000})
    assert readable_by(st(0o640, gid=5), 200000, {200000, 5})
    assert readable_by(st(0o400, uid=200000), 200000, {200000})
    assert not readable_by(st(0o044, uid=200000), 200000, {200000})


@needs_tools
def test_prepare_refuses_a_boot_image_with_a_backing_file(node) -> None:
    (node["elsewhere"] / "secret").write_bytes(b"\0" * 65536)
    image = node["disks"] / "boot.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(node["elsewhere"] / "secret"),
                    str(image)], check=True)
    vm = make_vm()
    vm.spec.boot.disk.image_path = str(image)
    vm.spec.boot.disk.format = QCOW2
    with pytest.raises(DeviceError, match="boot disk .* has a backing file"):
        devices(node).prepare(vm)
    vm.spec.boot.disk.image_path = str(node["disks"] / "absent.qcow2")
    with pytest.raises(DeviceError, match="does not exist"):
        devices(node).prepare(vm)
