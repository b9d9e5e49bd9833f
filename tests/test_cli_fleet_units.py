"""Manifests, records and tables of pools, instance types and preferences (pure functions)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from corral import manifest, printing_fleet
from corral.cli import main
from corral.cli.kinds import resource_groups
from corral.v1 import instancetype_pb2, pool_pb2, vm_pb2

POOL = """\
apiVersion: corral.dev/v1
kind: VirtualMachinePool
metadata: {name: web, labels: {tier: front}}
spec:
  replicas: 3
  selector: app=web
  maxUnavailable: 25%
  scaleInPolicy: {order: Newest}
  virtualMachineTemplate:
    metadata: {labels: {app: web}}
    spec:
      vcpus: 1
      memoryMib: 128
      runStrategy: Always
      boot: {disk: {imagePath: /img.qcow2, format: qcow2}}
"""

NOW = datetime(2025, 1, 2, 12, 0, 0, tzinfo=timezone.utc)


def test_pool_manifest():
    [pool] = manifest.parse_objects(POOL, "pool.yaml")
    assert isinstance(pool, pool_pb2.VirtualMachinePool)
    assert (pool.metadata.name, pool.spec.replicas, pool.spec.selector) == ("web", 3, "app=web")
    assert pool.spec.scale_in_policy.order == pool_pb2.SCALE_IN_ORDER_NEWEST
    template = pool.spec.virtual_machine_template
    assert dict(template.metadata.labels) == {"app": "web"}
    assert template.spec.boot.disk.format == vm_pb2.DISK_FORMAT_QCOW2
    assert template.spec.run_strategy == vm_pb2.RUN_STRATEGY_ALWAYS
    assert manifest.parse_object(manifest.to_manifest(pool)) == pool


@pytest.mark.parametrize("change, field, words", [
    (lambda t: t.replace("metadata: {labels: {app: web}}", "metadata: {name: x, labels: {app: web}}"),
     "spec.virtualMachineTemplate.metadata.name", "POOL-INDEX"),
    (lambda t: t.replace("metadata: {labels: {app: web}}", "metadata: {uid: x}"),
     "spec.virtualMachineTemplate.metadata.uid", "server"),
    (lambda t: t.replace("memoryMib: 128", "memoryMb: 128"),
     "spec.virtualMachineTemplate.spec.memoryMb", "unknown field"),
    (lambda t: t.replace("replicas: 3", "replicas: three"), None, "spec.replicas"),
    (lambda t: t.replace("{name: web,", "{name: web, owner: {kind: X}, "), "metadata.owner", "server"),
])
def test_pool_manifest_errors_name_the_field(change, field, words):
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse_objects(change(POOL), "pool.yaml")
    assert info.value.field == field
    assert words in str(info.value)


def test_instance_types_and_preferences():
    text = ("apiVersion: corral.dev/v1\nkind: InstanceType\nmetadata: {name: u1.small}\n"
            "spec: {vcpus: 2, memoryMib: 2048, hugepages: {pageSize: 2Mi}}\n---\n"
            "apiVersion: corral.dev/v1\nkind: Preference\nmetadata: {name: linux.q35}\n"
            "spec: {firmware: uefi, diskBus: sata, preferredCpuTopology: cores, terminationGracePeriodSeconds: 0}\n")
    it, pref = manifest.parse_objects(text)
    assert isinstance(it, instancetype_pb2.InstanceType) and it.metadata.name == "u1.small"
    assert pref.spec.firmware == vm_pb2.FIRMWARE_UEFI and pref.spec.disk_bus == vm_pb2.DISK_BUS_SATA
    assert pref.spec.preferred_cpu_topology == instancetype_pb2.PREFERRED_CPU_TOPOLOGY_CORES
    assert pref.spec.HasField("termination_grace_period_seconds")
    with pytest.raises(manifest.ManifestError, match="spec.firmware"):
        manifest.parse_objects(text.replace("uefi", "coreboot"))
    with pytest.raises(manifest.ManifestError, match="unsupported kind 'Pod'"):
        manifest.parse_objects(text.replace("kind: Preference", "kind: Pod"))
    # Names are unique per kind: a type and a preference may share one.
    manifest.check_unique_names([("a", it), ("b", pref)])
    with pytest.raises(manifest.ManifestError, match="also defined in a"):
        manifest.check_unique_names([("a", it), ("b", it)])


def test_applied_state_is_canonical_and_ignores_its_own_record():
    [pool] = manifest.parse_objects(POOL)
    state = manifest.applied_state(pool)
    reordered = manifest.parse_objects(POOL.replace("replicas: 3\n  selector: app=web", "selector: app=web\n  replicas: 3"))[0]
    assert manifest.applied_state(reordered) == state
    pool.metadata.annotations[manifest.LAST_APPLIED] = state
    pool.metadata.resource_version = 7
    pool.status.replicas = 2
    assert manifest.applied_state(pool) == state
    pool.metadata.labels["new"] = "x"
    assert manifest.applied_state(pool) != state


def test_pool_and_catalogue_tables():
    [pool] = manifest.parse_objects(POOL)
    pool.status.replicas, pool.status.ready_replicas, pool.status.updated_replicas = 3, 1, 2
    pool.status.template_revision = "abc123"
    assert [line.split() for line in printing_fleet.pool_table([pool], now=NOW).splitlines()] == [
        ["NAME", "DESIRED", "CURRENT", "READY", "UPDATED", "AGE"], ["web", "3", "3", "1", "2", "<unknown>"]]
    wide = printing_fleet.pool_table([pool], wide=True, now=NOW).splitlines()[1].split()
    assert wide[6:9] == ["app=web", "abc123", "false"]
    text = printing_fleet.describe_pool(pool, now=NOW)
    assert "Max Unavailable:" in text and "25%" in text and "Newest" in text and "imagePath: /img.qcow2" in text

    it = instancetype_pb2.InstanceType(spec=instancetype_pb2.InstanceTypeSpec(vcpus=2, memory_mib=2048))
    it.metadata.name = "u1.small"
    assert printing_fleet.instance_type_table([it], now=NOW).splitlines()[1].split() == [
        "u1.small", "2", "2Gi", "false", "<none>", "<unknown>"]
    pref = instancetype_pb2.Preference(spec=instancetype_pb2.PreferenceSpec(machine_type="q35"))
    pref.metadata.name = "linux.q35"
    assert printing_fleet.preference_table([pref], now=NOW).splitlines()[1].split() == [
        "linux.q35", "q35", "<none>", "<none>", "<none>", "<unknown>"]


def test_several_types_in_one_command():
    groups = resource_groups("vm/a", ["b", "pool/p", "it/u1.small", "vm/c"])
    assert [(kind.key, names) for kind, names in groups] == [
        ("virtualmachine", ["a", "b", "c"]), ("virtualmachinepool", ["p"]), ("instancetype", ["u1.small"])]


@pytest.mark.parametrize("args", [
    ["delete", "--all"],
    ["delete", "vm", "a", "--all"],
    ["delete", "vm", "a", "-l", "app=x"],
    ["delete", "node/n1"],
    ["delete", "vm", "a", "--cascade=orphan"],
    ["scale", "vm", "a", "--replicas", "2"],
    ["scale", "pool", "a", "--replicas", "-1"],
    ["edit", "vm", "a", "b"],
    ["edit", "node", "n1"],
    ["stop"],
])
def test_usage_errors_send_nothing(args, capsys):
    # Port 1 is closed: a command that sent anything would report UNAVAILABLE with exit code 1.
    assert main(["--server", "127.0.0.1:1", *args]) == 2
    assert "UNAVAILABLE" not in capsys.readouterr().err


@pytest.mark.parametrize("document, words", [
    ("apiVersion: corral.dev/v1\nkind: InstanceType\nmetadata: {name: U1_small}\nspec: {vcpus: 1, memoryMib: 64}\n",
     "instancetype/U1_small: INVALID_ARGUMENT: metadata.name 'U1_small' is not a DNS-1123 subdomain"),
    (POOL.replace("memoryMib: 128", "memoryMib: 1"), "virtualmachinepool/web: INVALID_ARGUMENT: "
     "spec.virtualMachineTemplate: spec.memory_mib"),
])
def test_apply_checks_before_sending(tmp_path, capsys, document, words):
    path = tmp_path / "all.yaml"
    path.write_text(POOL.replace("name: web", "name: fine") + "---\n" + document)
    assert main(["--server", "127.0.0.1:1", "apply", "-f", str(path)]) == 1
    err = capsys.readouterr().err
    assert words in err and "UNAVAILABLE" not in err


def test_apply_update_keeps_what_apply_did_not_set():
    from corral.cli.apply import applied_update
    [live] = manifest.parse_objects(POOL)
    live.metadata.annotations["controller.example/note"] = "kept"
    live.metadata.annotations["mine"] = "old"
    live.metadata.resource_version = 9
    live.status.replicas = 3
    [wanted] = manifest.parse_objects(POOL.replace("tier: front", "tier: back"))
    desired = manifest.applied_state(wanted)
    # Without a record none of the annotations were apply's: all stay; the spec is unchanged.
    update = applied_update(live, wanted, None, desired)
    assert dict(update.metadata.annotations) == {"controller.example/note": "kept", "mine": "old",
                                                manifest.LAST_APPLIED: desired}
    assert update.metadata.resource_version == 9 and not update.HasField("status")
    assert update.metadata.labels["tier"] == "back" and update.spec == live.spec
    # With a record, what apply set and the file dropped goes; a changed spec is the file's.
    live.metadata.annotations[manifest.LAST_APPLIED] = manifest.applied_state(live)
    wanted.spec.replicas = 5
    update = applied_update(live, wanted, live.metadata.annotations[manifest.LAST_APPLIED],
                            manifest.applied_state(wanted))
    assert "mine" not in update.metadata.annotations and "controller.example/note" not in update.metadata.annotations
    assert update.spec.replicas == 5


def test_max_unavailable_may_be_written_as_a_number():
    from corral import manifest
    text = POOL.replace("maxUnavailable: 25%", "maxUnavailable: 2")
    assert manifest.parse_objects(text, "pool.yaml")[0].spec.max_unavailable == "2"
