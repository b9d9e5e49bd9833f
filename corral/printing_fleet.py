"""How the CLI shows pools, instance types and preferences (tables and describe blocks).

Kept apart from corral/printing.py (VMs, nodes, migrations), whose helpers it uses. Pure functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from google.protobuf import json_format

from corral.printing import (NONE, _block, _enum_name, _indent, _metadata_pairs, dump_yaml, format_age,
                             format_labels, format_memory, format_table, format_time)
from corral.v1 import instancetype_pb2, pool_pb2, vm_pb2

POOL_COLUMNS = ("NAME", "DESIRED", "CURRENT", "READY", "UPDATED", "AGE")
POOL_WIDE_COLUMNS = POOL_COLUMNS + ("SELECTOR", "TEMPLATE REVISION", "PAUSED", "LABELS")
INSTANCE_TYPE_COLUMNS = ("NAME", "VCPUS", "MEMORY", "DEDICATED CPUS", "HUGEPAGES", "AGE")
INSTANCE_TYPE_WIDE_COLUMNS = INSTANCE_TYPE_COLUMNS + ("NODE SELECTOR", "LABELS")
PREFERENCE_COLUMNS = ("NAME", "MACHINE TYPE", "FIRMWARE", "DISK BUS", "CPU TOPOLOGY", "AGE")
PREFERENCE_WIDE_COLUMNS = PREFERENCE_COLUMNS + ("GRACE PERIOD", "LABELS")


def _shown(text: str) -> str:
    return text or NONE


def pool_row(pool: pool_pb2.VirtualMachinePool, *, wide: bool = False, now: datetime | None = None) -> list[str]:
    st = pool.status
    row = [pool.metadata.name, str(pool.spec.replicas), str(st.replicas), str(st.ready_replicas),
           str(st.updated_replicas), format_age(pool.metadata.create_time, now)]
    if wide:
        row += [_shown(pool.spec.selector), _shown(st.template_revision), str(pool.spec.paused).lower(),
                format_labels(pool.metadata.labels)]
    return row


def pool_table(pools: Iterable[pool_pb2.VirtualMachinePool], *, wide: bool = False,
               now: datetime | None = None) -> str:
    """The `corral get pools` table: desired replicas against what the pool has."""
    return format_table(POOL_WIDE_COLUMNS if wide else POOL_COLUMNS, [pool_row(p, wide=wide, now=now) for p in pools])


def instance_type_row(it: instancetype_pb2.InstanceType, *, wide: bool = False,
                      now: datetime | None = None) -> list[str]:
    spec = it.spec
    row = [it.metadata.name, str(spec.vcpus), format_memory(spec.memory_mib),
           str(spec.dedicated_cpu_placement).lower(), _shown(spec.hugepages.page_size),
           format_age(it.metadata.create_time, now)]
    if wide:
        row += [format_labels(spec.node_selector), format_labels(it.metadata.labels)]
    return row


def instance_type_table(items: Iterable[instancetype_pb2.InstanceType], *, wide: bool = False,
                        now: datetime | None = None) -> str:
    """The `corral get instancetypes` table."""
    return format_table(INSTANCE_TYPE_WIDE_COLUMNS if wide else INSTANCE_TYPE_COLUMNS,
                        [instance_type_row(i, wide=wide, now=now) for i in items])


def _spec_enum(enum_type: Any, value: int, prefix: str) -> str:
    """An enum the VM may leave unset: "<none>" rather than "Unknown" when it does."""
    return _enum_name(enum_type, value, prefix) if value else NONE


def preference_row(pref: instancetype_pb2.Preference, *, wide: bool = False,
                   now: datetime | None = None) -> list[str]:
    spec = pref.spec
    row = [pref.metadata.name, _shown(spec.machine_type),
           _spec_enum(vm_pb2.Firmware, spec.firmware, "FIRMWARE_"),
           _spec_enum(vm_pb2.DiskBus, spec.disk_bus, "DISK_BUS_"),
           _spec_enum(instancetype_pb2.PreferredCpuTopology, spec.preferred_cpu_topology,
                      "PREFERRED_CPU_TOPOLOGY_"),
           format_age(pref.metadata.create_time, now)]
    if wide:
        grace = (f"{spec.termination_grace_period_seconds}s"
                 if spec.HasField("termination_grace_period_seconds") else NONE)
        row += [grace, format_labels(pref.metadata.labels)]
    return row


def preference_table(items: Iterable[instancetype_pb2.Preference], *, wide: bool = False,
                     now: datetime | None = None) -> str:
    """The `corral get preferences` table."""
    return format_table(PREFERENCE_WIDE_COLUMNS if wide else PREFERENCE_COLUMNS,
                        [preference_row(p, wide=wide, now=now) for p in items])


def _yaml_lines(message: Any, indent: int) -> list[str]:
    """A message (a spec) as indented YAML lines, for describe."""
    body = json_format.MessageToDict(message)
    return _indent(dump_yaml(body), indent) if body else []


def describe_pool(pool: pool_pb2.VirtualMachinePool, *, now: datetime | None = None) -> str:
    """The `corral describe pool` block: replicas, rollout settings, conditions, the template."""
    spec, st = pool.spec, pool.status
    policy = spec.scale_in_policy
    healing = spec.auto_healing
    order = _enum_name(pool_pb2.ScaleInOrder, policy.order, "SCALE_IN_ORDER_") if policy.order else "HighestIndex"
    conditions = _indent(format_table(
        ("TYPE", "STATUS", "REASON", "LAST TRANSITION", "MESSAGE"),
        [(c.type, "True" if c.status else "False", c.reason or NONE, format_time(c.last_transition_time),
          c.message or "") for c in st.conditions]), 2) if st.conditions else []
    lines = _block(_metadata_pairs(pool.metadata, now) + [
        ("Spec", _block([
            ("Replicas", spec.replicas),
            ("Selector", _shown(spec.selector)),
            ("Paused", str(spec.paused).lower()),
            ("Max Unavailable", spec.max_unavailable or "1"),
            ("Scale In", order + (f", first {policy.prefer_label_selector}" if policy.prefer_label_selector else "")),
            ("Auto Healing", "disabled" if healing.disabled else
             f"after {healing.failed_runs or 3} failed runs within {healing.window_seconds or 600}s"),
        ], 2)),
        ("Status", _block([
            ("Replicas", st.replicas),
            ("Ready", st.ready_replicas),
            ("Updated", st.updated_replicas),
            ("Template Revision", _shown(st.template_revision)),
            ("Observed Version", st.observed_resource_version or NONE),
        ], 2)),
        ("Conditions", conditions),
        ("Template", _block([
            ("Labels", format_labels(spec.virtual_machine_template.metadata.labels)),
            ("Spec", _yaml_lines(spec.virtual_machine_template.spec, 4)),
        ], 2)),
    ])
    return "\n".join(lines)


def describe_spec_object(obj: Any, *, now: datetime | None = None) -> str:
    """`corral describe instancetype|preference`: metadata, then the spec as YAML."""
    return "\n".join(_block(_metadata_pairs(obj.metadata, now) + [("Spec", _yaml_lines(obj.spec, 2))]))
