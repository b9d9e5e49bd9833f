"""`corral apply`, `edit`, `delete`/verbs with -l and --all, `scale` and the new kinds' `get`,
against a real controller (no handler: VMs stay Pending, which these commands do not mind)."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from corral import manifest
from corral.client import Client
from tests.cluster import REPO, wait_for

VM = """\
apiVersion: corral.dev/v1
kind: VirtualMachine
metadata:
  name: {name}
  labels: {{app: {app}}}
spec:
  vcpus: {vcpus}
  memoryMib: 128
  boot:
    kernel: {{kernelPath: /boot/vmlinuz}}
"""

INSTANCE_TYPE = """\
apiVersion: corral.dev/v1
kind: InstanceType
metadata: {{name: u1.small}}
spec: {{vcpus: 2, memoryMib: {memory}}}
"""

PREFERENCE = """\
apiVersion: corral.dev/v1
kind: Preference
metadata: {name: linux.q35}
spec: {machineType: q35, diskBus: sata, preferredCpuTopology: cores}
"""

TYPED_VM = """\
apiVersion: corral.dev/v1
kind: VirtualMachine
metadata: {name: typed, labels: {app: fleet}}
spec:
  instanceType: {name: u1.small}
  preference: {name: linux.q35}
  boot: {kernel: {kernelPath: /boot/vmlinuz}}
"""


def corral(cluster, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corral.cli", "--server", cluster.servers, *args],
                          input=stdin, capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, **(env or {})})


def lines(result: subprocess.CompletedProcess) -> list[str]:
    return result.stdout.splitlines()


def settled(api: Client, *names: str) -> None:
    """Waits for the leader's one status write to each new VM (no node: Unschedulable), so
    that resource versions compared afterwards move only by what the test does."""
    for name in names:
        wait_for(lambda: any(c.reason == "Unschedulable" for c in api.get_vm(name).status.conditions),
                 timeout=20, what=f"vm {name} to be marked Unschedulable")


@pytest.fixture
def api(cluster):
    cluster.start_controller()
    with Client(cluster.servers) as client:
        yield client


def test_apply_created_unchanged_configured(cluster, api, tmp_path):
    path = tmp_path / "vms.yaml"
    path.write_text(VM.format(name="ap-a", app="one", vcpus=1) + "---\n" + VM.format(name="ap-b", app="one", vcpus=1))
    first = corral(cluster, "apply", "-f", str(path))
    assert first.returncode == 0, first.stderr
    assert lines(first) == ["virtualmachine/ap-a created", "virtualmachine/ap-b created"]
    a = api.get_vm("ap-a")
    assert json.loads(a.metadata.annotations[manifest.LAST_APPLIED])["labels"] == {"app": "one"}

    # Applying the same file again writes nothing: the resource versions do not move.
    settled(api, "ap-a", "ap-b")
    versions = {name: api.get_vm(name).metadata.resource_version for name in ("ap-a", "ap-b")}
    again = corral(cluster, "apply", "-f", str(path))
    assert again.returncode == 0, again.stderr
    assert lines(again) == ["virtualmachine/ap-a unchanged", "virtualmachine/ap-b unchanged"]
    assert {name: api.get_vm(name).metadata.resource_version for name in versions} == versions

    # One VM changes in the file: only it is written, with its new labels and spec.
    path.write_text(VM.format(name="ap-a", app="two", vcpus=2) + "---\n" + VM.format(name="ap-b", app="one", vcpus=1))
    changed = corral(cluster, "apply", "-f", str(path))
    assert lines(changed) == ["virtualmachine/ap-a configured", "virtualmachine/ap-b unchanged"]
    a = api.get_vm("ap-a")
    assert dict(a.metadata.labels) == {"app": "two"} and a.spec.vcpus == 2
    assert a.metadata.resource_version > versions["ap-a"]
    assert api.get_vm("ap-b").metadata.resource_version == versions["ap-b"]
    assert lines(corral(cluster, "apply", "-f", str(path))) == [
        "virtualmachine/ap-a unchanged", "virtualmachine/ap-b unchanged"]


def test_apply_reports_a_refused_object_and_goes_on(cluster, api):
    # The middle VM names an instance type that does not exist: the server refuses it alone.
    refused = TYPED_VM.replace("name: typed", "name: ap-refused")
    text = "---\n".join([VM.format(name="ap-1", app="x", vcpus=1), refused, VM.format(name="ap-2", app="x", vcpus=1)])
    result = corral(cluster, "apply", "-f", "-", stdin=text)
    assert result.returncode == 1
    assert lines(result) == ["virtualmachine/ap-1 created", "virtualmachine/ap-2 created"]
    assert "virtualmachine/ap-refused: FAILED_PRECONDITION" in result.stderr
    assert sorted(vm.metadata.name for vm in api.list_vms()) == ["ap-1", "ap-2"]


def test_bad_document_applies_nothing(cluster, api):
    bad = VM.format(name="Bad_Name", app="x", vcpus=1)
    text = VM.format(name="ap-good", app="x", vcpus=1) + "---\n" + bad
    result = corral(cluster, "apply", "-f", "-", stdin=text)
    assert result.returncode == 1
    assert "Bad_Name" in result.stderr and "INVALID_ARGUMENT" in result.stderr and result.stdout == ""
    typo = corral(cluster, "apply", "-f", "-", stdin=text.replace("Bad_Name", "ok").replace("vcpus: 1\n  memoryMib: 128\n  boot", "vcpus: 1\n  memoryMib: 128\n  bot", 1))
    assert typo.returncode == 1 and "spec.bot" in typo.stderr
    assert api.list_vms() == []


def test_apply_a_directory_of_several_kinds(cluster, api, tmp_path):
    # Sorted by name the VM comes first, but what it names must exist before it: apply orders.
    (tmp_path / "a-vm.yaml").write_text(TYPED_VM)
    (tmp_path / "b-sizes.yml").write_text(INSTANCE_TYPE.format(memory=256))
    (tmp_path / "c-preference.json").write_text(json.dumps(manifest.load_documents(PREFERENCE)[0]))
    (tmp_path / "notes.txt").write_text("not a manifest")
    first = corral(cluster, "apply", "-f", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert lines(first) == ["instancetype/u1.small created", "preference/linux.q35 created",
                            "virtualmachine/typed created"]
    settled(api, "typed")
    vm = api.get_vm("typed")
    assert (vm.spec.vcpus, vm.spec.memory_mib, vm.spec.machine_type) == (2, 256, "q35")

    # The server filled the VM's spec in: the record, not the stored spec, says it is unchanged.
    versions = [api.get_instance_type("u1.small").metadata.resource_version,
                api.get_preference("linux.q35").metadata.resource_version, vm.metadata.resource_version]
    again = corral(cluster, "apply", "-f", str(tmp_path))
    assert lines(again) == ["instancetype/u1.small unchanged", "preference/linux.q35 unchanged",
                            "virtualmachine/typed unchanged"]
    assert [api.get_instance_type("u1.small").metadata.resource_version,
            api.get_preference("linux.q35").metadata.resource_version,
            api.get_vm("typed").metadata.resource_version] == versions

    # A refused update is reported for its object; the others are applied, the exit code is 1.
    (tmp_path / "a-vm.yaml").write_text(TYPED_VM.replace("  instanceType:", "  vcpus: 4\n  instanceType:"))
    (tmp_path / "b-sizes.yml").write_text(INSTANCE_TYPE.format(memory=512))
    changed = corral(cluster, "apply", "-f", str(tmp_path))
    assert changed.returncode == 1
    assert lines(changed) == ["instancetype/u1.small configured", "preference/linux.q35 unchanged"]
    assert "virtualmachine/typed: INVALID_ARGUMENT" in changed.stderr and "vcpus" in changed.stderr
    assert api.get_vm("typed").metadata.resource_version == versions[2]
    (tmp_path / "a-vm.yaml").write_text(TYPED_VM)
    assert lines(corral(cluster, "apply", "-f", str(tmp_path)))[2] == "virtualmachine/typed unchanged"
    assert api.get_instance_type("u1.small").spec.memory_mib == 512

    table = corral(cluster, "get", "instancetypes")
    assert table.returncode == 0, table.stderr
    assert [line.split()[:3] for line in lines(table)] == [["NAME", "VCPUS", "MEMORY"], ["u1.small", "2", "512Mi"]]
    described = corral(cluster, "describe", "instancetype/u1.small").stdout
    assert "Name:" in described and "memoryMib: '512'" in described and manifest.LAST_APPLIED in described
    pref_table = lines(corral(cluster, "get", "preferences"))
    assert pref_table[1].split()[:5] == ["linux.q35", "q35", "<none>", "Sata", "Cores"]
    prefs = corral(cluster, "get", "pref", "-o", "name")
    assert lines(prefs) == ["preference/linux.q35"]
    shown = manifest.load_documents(corral(cluster, "get", "it", "u1.small", "-o", "yaml").stdout)[0]
    assert shown["kind"] == "InstanceType" and shown["spec"]["memoryMib"] == "512"
    # What get -o name prints goes back in; a type still named by a VM is refused, the rest goes.
    names = lines(corral(cluster, "get", "instancetypes", "-o", "name"))
    refused = corral(cluster, "delete", *names)
    assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr
    assert lines(corral(cluster, "delete", "vm/typed")) == ["virtualmachine/typed deleted"]
    assert lines(corral(cluster, "delete", *names, *lines(prefs))) == [
        "instancetype/u1.small deleted", "preference/linux.q35 deleted"]


def test_delete_and_verbs_by_names_selector_and_all(cluster, api):
    text = "---\n".join(VM.format(name=f"dv-{i}", app="web" if i < 3 else "db", vcpus=1) for i in range(5))
    assert corral(cluster, "create", "-f", "-", stdin=text).returncode == 0

    stopped = corral(cluster, "stop", "dv-0", "vm/dv-1")
    assert stopped.returncode == 0, stopped.stderr
    assert [line.split(" (")[0] for line in lines(stopped)] == [
        "virtualmachine/dv-0 stop requested", "virtualmachine/dv-1 stop requested"]
    started = corral(cluster, "start", "-l", "app=web")
    assert [line.split(" (")[0] for line in lines(started)] == [
        f"virtualmachine/dv-{i} start requested" for i in range(3)]
    assert corral(cluster, "start", "vms", "--all").returncode == 0

    for refused in (["delete", "vm", "dv-0", "-l", "app=web"], ["delete", "--all"], ["delete", "vms"],
                    ["stop", "dv-0", "--all"], ["delete", "nodes", "--all"]):
        result = corral(cluster, *refused)
        assert result.returncode == 2, (refused, result.stderr)
    assert len(api.list_vms()) == 5

    names = lines(corral(cluster, "get", "vms", "-l", "app=db", "-o", "name"))
    assert names == ["virtualmachine/dv-3", "virtualmachine/dv-4"]
    assert lines(corral(cluster, "delete", *names)) == [f"{name} deleted" for name in names]
    assert lines(corral(cluster, "delete", "vms", "-l", "app=web,vm!=x")) == [
        f"virtualmachine/dv-{i} deleted" for i in range(3)]
    assert api.list_vms() == []
    nothing = corral(cluster, "delete", "vms", "--all")
    assert nothing.returncode == 0 and "No resources found" in nothing.stderr


def test_delete_all(cluster, api):
    text = "---\n".join(VM.format(name=f"da-{i}", app="x", vcpus=1) for i in range(3))
    assert corral(cluster, "create", "-f", "-", stdin=text).returncode == 0
    deleted = corral(cluster, "delete", "vm", "--all")
    assert deleted.returncode == 0, deleted.stderr
    assert lines(deleted) == [f"virtualmachine/da-{i} deleted" for i in range(3)]
    assert api.list_vms() == []


def editor(tmp_path: Path, body: str) -> dict[str, str]:
    """$EDITOR set to a Python script whose argv[1] is the file to edit."""
    script = tmp_path / f"editor-{abs(hash(body))}.py"
    script.write_text("import sys\nfrom pathlib import Path\npath = Path(sys.argv[1])\n" + body)
    return {"EDITOR": shlex.join([sys.executable, str(script)])}


def test_edit_writes_back_with_the_version_read(cluster, api, tmp_path):
    assert corral(cluster, "create", "-f", "-", stdin=VM.format(name="ed", app="one", vcpus=1)).returncode == 0
    settled(api, "ed")
    before = api.get_vm("ed")

    cancelled = corral(cluster, "edit", "vm", "ed", env=editor(tmp_path, "pass\n"))
    assert cancelled.returncode == 0 and "Edit cancelled, no changes made." in cancelled.stderr
    assert api.get_vm("ed").metadata.resource_version == before.metadata.resource_version

    relabel = "path.write_text(path.read_text().replace('app: one', 'app: two').replace('vcpus: 1', 'vcpus: 3'))\n"
    edited = corral(cluster, "edit", "vm/ed", env=editor(tmp_path, relabel))
    assert edited.returncode == 0, edited.stderr
    assert lines(edited) == ["virtualmachine/ed edited"]
    after = api.get_vm("ed")
    assert dict(after.metadata.labels) == {"app": "two"} and after.spec.vcpus == 3

    # The object changes between the read and the write (the editor itself changes it through
    # the API): the edit is refused, the other change stays, and the edit is kept in a file.
    racing = (
        "from corral.client import Client\n"
        f"with Client({cluster.servers!r}) as client:\n"
        "    vm = client.get_vm('ed')\n"
        "    vm.metadata.labels['app'] = 'elsewhere'\n"
        "    client.update_vm(vm)\n"
        "path.write_text(path.read_text().replace('vcpus: 3', 'vcpus: 4'))\n")
    conflict = corral(cluster, "edit", "vm", "ed", env={**editor(tmp_path, racing), "PYTHONPATH": str(REPO)})
    assert conflict.returncode == 1
    assert "changed since it was read" in conflict.stderr
    kept = Path(conflict.stderr.split("kept in ")[1].split(";")[0])
    assert "vcpus: 4" in kept.read_text()
    current = api.get_vm("ed")
    assert current.spec.vcpus == 3 and current.metadata.labels["app"] == "elsewhere"

    invalid = corral(cluster, "edit", "vm", "ed",
                     env=editor(tmp_path, "path.write_text(path.read_text().replace('vcpus: 3', 'vcpus: many'))\n"))
    assert invalid.returncode == 1 and "spec.vcpus" in invalid.stderr
    kept = Path(invalid.stderr.split("kept in ")[1].strip())
    assert "vcpus: many" in kept.read_text()
    renamed = corral(cluster, "edit", "vm", "ed",
                     env=editor(tmp_path, "path.write_text(path.read_text().replace('name: ed', 'name: other'))\n"))
    assert renamed.returncode == 1 and "name cannot change" in renamed.stderr
    assert api.get_vm("ed").metadata.resource_version == current.metadata.resource_version


POOL = """\
apiVersion: corral.dev/v1
kind: VirtualMachinePool
metadata: {{name: web, labels: {{tier: {tier}}}}}
spec:
  replicas: 2
  selector: app=web
  virtualMachineTemplate:
    metadata: {{labels: {{app: web}}}}
    spec:
      vcpus: 1
      memoryMib: 128
      boot: {{kernel: {{kernelPath: /boot/vmlinuz}}}}
"""


def members(api: Client) -> list[str]:
    return sorted(vm.metadata.name for vm in api.list_vms("app=web") if not vm.metadata.HasField("delete_time"))


def test_pools_apply_get_scale_edit_and_orphan(cluster, api, tmp_path):
    path = tmp_path / "pool.yaml"
    path.write_text(POOL.format(tier="front"))
    created = corral(cluster, "apply", "-f", str(path))
    assert created.returncode == 0, created.stderr
    assert lines(created) == ["virtualmachinepool/web created"]
    wait_for(lambda: members(api) == ["web-0", "web-1"], timeout=20, what="the pool's two VMs")
    wait_for(lambda: lines(corral(cluster, "get", "pools"))[1].split()[:3] == ["web", "2", "2"], timeout=20,
             what="get pools to show 2 of 2")
    assert lines(corral(cluster, "get", "pools"))[0].split() == ["NAME", "DESIRED", "CURRENT", "READY", "UPDATED", "AGE"]
    assert lines(corral(cluster, "get", "vmpool", "-o", "name")) == ["virtualmachinepool/web"]
    shown = manifest.load_documents(corral(cluster, "get", "pool/web", "-o", "yaml").stdout)[0]
    assert shown["kind"] == "VirtualMachinePool" and shown["spec"]["replicas"] == 2
    assert "Max Unavailable:" in corral(cluster, "describe", "pool", "web").stdout

    scaled = corral(cluster, "scale", "pool", "web", "--replicas", "3")
    assert scaled.returncode == 0, scaled.stderr
    assert lines(scaled) == ["virtualmachinepool/web scaled"]
    wait_for(lambda: members(api) == ["web-0", "web-1", "web-2"], timeout=20, what="a third VM")
    stale = corral(cluster, "scale", "pool/web", "--replicas", "1", "--resource-version", "1")
    assert stale.returncode == 1 and "ABORTED" in stale.stderr
    assert api.get_pool("web").spec.replicas == 3

    # The file did not change since it was applied: nothing is written, the scale stays.
    assert lines(corral(cluster, "apply", "-f", str(path))) == ["virtualmachinepool/web unchanged"]
    # Only the pool's labels changed in the file: they are written, and its spec (scaled) is kept.
    path.write_text(POOL.format(tier="back"))
    assert lines(corral(cluster, "apply", "-f", str(path))) == ["virtualmachinepool/web configured"]
    pool = api.get_pool("web")
    assert pool.metadata.labels["tier"] == "back" and pool.spec.replicas == 3

    edit = "path.write_text(path.read_text().replace('replicas: 3', 'replicas: 1'))\n"
    edited = corral(cluster, "edit", "pool", "web", env=editor(tmp_path, edit))
    assert edited.returncode == 0, edited.stderr
    wait_for(lambda: members(api) == ["web-0"], timeout=20, what="the pool to shrink to one VM")

    orphaned = corral(cluster, "delete", "pool", "web", "--cascade=orphan")
    assert orphaned.returncode == 0, orphaned.stderr
    assert lines(orphaned) == ["virtualmachinepool/web deleted (its VMs orphaned)"]
    wait_for(lambda: corral(cluster, "get", "pools", "-o", "name").stdout == "", timeout=20, what="the pool to go")
    assert members(api) == ["web-0"]
