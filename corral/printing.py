"""How the CLI shows resources: tables, describe blocks, json/yaml/name output. Pure functions."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from corral import status as vm_status
from corral.manifest import API_VERSION
from corral.scheduling import allocatable
from corral.v1 import meta_pb2, migration_pb2, node_pb2, vm_pb2

NONE = "<none>"

VM_COLUMNS = ("NAME", "STATUS", "PHASE", "NODE", "VCPUS", "MEMORY", "AGE")
VM_WIDE_COLUMNS = VM_COLUMNS + ("UID", "LABELS")
NODE_COLUMNS = ("NAME", "STATUS", "VCPUS", "CPU RATIO", "MEMORY", "VMS", "AGE")
NODE_WIDE_COLUMNS = NODE_COLUMNS + ("ADDRESS", "HYPERVISOR", "LABELS")


# --- enums -----------------------------------------------------------------------------------


def _enum_name(enum_type: Any, value: int, prefix: str) -> str:
    try:
        name = enum_type.Name(value)
    except ValueError:
        return f"Unknown({value})"
    name = name.removeprefix(prefix)
    if name == "UNSPECIFIED":
        return "Unknown"
    return "".join(part.title() for part in name.split("_"))


def phase_name(phase: int) -> str:
    """VIRTUAL_MACHINE_PHASE_RUNNING -> "Running"; unspecified -> "Unknown"."""
    return _enum_name(vm_pb2.VirtualMachinePhase, phase, "VIRTUAL_MACHINE_PHASE_")


def parse_phase(text: str) -> int:
    """"Running", "running" or "VIRTUAL_MACHINE_PHASE_RUNNING" -> the enum value; ValueError."""
    key = text.strip().upper().removeprefix("VIRTUAL_MACHINE_PHASE_")
    try:
        value = vm_pb2.VirtualMachinePhase.Value("VIRTUAL_MACHINE_PHASE_" + key)
    except ValueError:
        value = 0
    if not value:
        known = ", ".join(phase_name(v) for v in vm_pb2.VirtualMachinePhase.values() if v)
        raise ValueError(f"unknown phase {text!r} (one of: {known})")
    return value


def node_status(phase: int) -> str:
    """NODE_PHASE_READY -> "Ready", NODE_PHASE_NOT_READY -> "NotReady"."""
    return _enum_name(node_pb2.NodePhase, phase, "NODE_PHASE_")


# --- small formats ---------------------------------------------------------------------------


def _to_datetime(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=timezone.utc)


def _is_set(ts: Timestamp) -> bool:
    return bool(ts.seconds or ts.nanos)


def format_time(ts: Timestamp) -> str:
    """RFC 3339 in UTC, to the second; "<none>" when unset."""
    if not _is_set(ts):
        return NONE
    return _to_datetime(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_duration(seconds: float) -> str:
    """kubectl's HumanDuration: 45s, 3m20s, 15m, 5h10m, 20h, 3d4h, 40d, 2y30d, 10y."""
    seconds = int(seconds)
    if seconds < 0:
        seconds = 0
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = hours // 24
        return f"{days // 365}y{days % 365}d" if days % 365 else f"{days // 365}y"
    return f"{hours // 24 // 365}y"


def format_age(ts: Timestamp, now: datetime | None = None) -> str:
    """How long ago ``ts`` was, kubectl style; "<unknown>" when unset."""
    if not _is_set(ts):
        return "<unknown>"
    now = now or datetime.now(timezone.utc)
    return human_duration((now - _to_datetime(ts)).total_seconds())


def format_memory(mib: int) -> str:
    """128 -> "128Mi", 2048 -> "2Gi" (exact multiples only)."""
    if mib and mib % 1024 == 0:
        return f"{mib // 1024}Gi"
    return f"{mib}Mi"


def format_labels(labels: Mapping[str, str]) -> str:
    """{"b": "2", "a": "1"} -> "a=1,b=2"; "<none>" when empty."""
    if not labels:
        return NONE
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns, three spaces apart, as kubectl prints them (no trailing blanks)."""
    table = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = []
    for row in table:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


# --- tables ----------------------------------------------------------------------------------


def vm_row(vm: vm_pb2.VirtualMachine, *, wide: bool = False,
           now: datetime | None = None) -> list[str]:
    row = [
        vm.metadata.name,
        vm.status.printable_status or vm_status.printable_status(vm),
        phase_name(vm.status.phase),
        vm.status.node_name or NONE,
        str(vm.spec.vcpus),
        format_memory(vm.spec.memory_mib),
        format_age(vm.metadata.create_time, now),
    ]
    if wide:
        row += [vm.metadata.uid or NONE, format_labels(vm.metadata.labels)]
    return row


def vm_table(vms: Iterable[vm_pb2.VirtualMachine], *, wide: bool = False,
             now: datetime | None = None) -> str:
    """The `corral get vms` table."""
    return format_table(VM_WIDE_COLUMNS if wide else VM_COLUMNS,
                        [vm_row(vm, wide=wide, now=now) for vm in vms])


def node_row(node: node_pb2.Node, *, wide: bool = False,
             now: datetime | None = None) -> list[str]:
    st = node.status
    status = node_status(st.phase)
    if node.spec.unschedulable:
        status += ",SchedulingDisabled"
    row = [
        node.metadata.name,
        status,
        f"{st.allocated.vcpus}/{allocatable(node).vcpus}",
        str(st.cpu_allocation_ratio or 1),
        f"{format_memory(st.allocated.memory_mib)}/{format_memory(allocatable(node).memory_mib)}",
        str(st.virtual_machine_count),
        format_age(node.metadata.create_time if _is_set(node.metadata.create_time)
                   else st.registered_time, now),
    ]
    if wide:
        row += [st.address or NONE, st.hypervisor or NONE, format_labels(node.metadata.labels)]
    return row


def node_table(nodes: Iterable[node_pb2.Node], *, wide: bool = False,
               now: datetime | None = None) -> str:
    """The `corral get nodes` table."""
    return format_table(NODE_WIDE_COLUMNS if wide else NODE_COLUMNS,
                        [node_row(n, wide=wide, now=now) for n in nodes])


# --- json / yaml / name ----------------------------------------------------------------------


def to_dict(message: Any, kind: str) -> dict[str, Any]:
    """A resource as Kubernetes-style JSON: apiVersion and kind first, then camelCase fields."""
    return {"apiVersion": API_VERSION, "kind": kind, **json_format.MessageToDict(message)}


def list_dict(messages: Iterable[Any], kind: str) -> dict[str, Any]:
    """Several resources as one ``<kind>List`` object with ``items``, as kubectl prints them."""
    return {"apiVersion": API_VERSION, "kind": f"{kind}List",
            "items": [to_dict(m, kind) for m in messages]}


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2)


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False).rstrip("\n")


# --- describe --------------------------------------------------------------------------------


def _block(pairs: Sequence[tuple[str, Any]], indent: int = 0) -> list[str]:
    """Aligned "Key:  value" lines; a value that is a list of lines becomes a nested block."""
    width = max((len(k) for k, v in pairs if not isinstance(v, list)), default=0) + 2
    pad = " " * indent
    out = []
    for key, value in pairs:
        if isinstance(value, list):
            out.append(f"{pad}{key}:" + ("" if value else f"  {NONE}"))
            out.extend(value)
        else:
            out.append(f"{pad}{(key + ':').ljust(width)}{value}".rstrip())
    return out


def _indent(text: str, n: int) -> list[str]:
    return [(" " * n + line).rstrip() for line in text.splitlines()]


def _time_with_age(ts: Timestamp, now: datetime | None) -> str:
    if not _is_set(ts):
        return NONE
    return f"{format_time(ts)} ({format_age(ts, now)} ago)"


def _metadata_pairs(meta: meta_pb2.ObjectMeta, now: datetime | None) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = [
        ("Name", meta.name),
        ("Labels", format_labels(meta.labels)),
        ("UID", meta.uid or NONE),
        ("Resource Version", meta.resource_version),
        ("Created", _time_with_age(meta.create_time, now)),
    ]
    if meta.annotations:
        pairs.insert(2, ("Annotations", [f"  {k}: {_short(v)}" for k, v in sorted(meta.annotations.items())]))
    if meta.owner.name:
        pairs.append(("Owner", f"{meta.owner.kind}/{meta.owner.name}"))
    if _is_set(meta.delete_time):
        pairs.append(("Deletion Requested", _time_with_age(meta.delete_time, now)))
    return pairs


def _short(text: str, limit: int = 80) -> str:
    """An annotation's value on one line (the last-applied one is a whole object)."""
    line = text.replace("\n", " ")
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _boot_lines(boot: vm_pb2.BootSource) -> list[str]:
    which = boot.WhichOneof("source")
    if which == "kernel":
        k = boot.kernel
        return _block([("Kernel", k.kernel_path or NONE), ("Initrd", k.initrd_path or NONE),
                       ("Cmdline", k.cmdline or NONE)], 4)
    if which == "disk":
        d = boot.disk
        fmt = _enum_name(vm_pb2.DiskFormat, d.format, "DISK_FORMAT_")
        return _block([("Disk Image", d.image_path or NONE), ("Format", fmt)], 4)
    return []


def describe_vm(vm: vm_pb2.VirtualMachine, *, now: datetime | None = None) -> str:
    """The `corral describe vm` block: metadata, spec, status, conditions, phase transitions."""
    spec, st = vm.spec, vm.status
    spec_lines = _block([
        ("vCPUs", f"{spec.vcpus} (max {spec.max_vcpus})" if spec.max_vcpus else spec.vcpus),
        ("Memory", f"{format_memory(spec.memory_mib)} (max {format_memory(spec.max_memory_mib)})"
         if spec.max_memory_mib else format_memory(spec.memory_mib)),
        ("Node Selector", format_labels(spec.node_selector)),
        ("Run Strategy", vm_status.run_strategy_name(spec.run_strategy)),
        ("Boot", _boot_lines(spec.boot)),
    ], 2)
    status_lines = _block([
        ("Status", st.printable_status or vm_status.printable_status(vm)),
        ("Phase", phase_name(st.phase)),
        ("Node", st.node_name or NONE),
        ("Run", st.instance_uid or NONE),
        ("Run Started", format_time(st.run_start_time) if _is_set(st.run_start_time) else NONE),
        ("Restarts", st.restart_count),
    ] + ([("Plugged", f"{st.current_vcpus} vCPUs, {format_memory(st.current_memory_mib)} (last resize)")]
         if st.current_vcpus else []) + [
        ("Serial Log", st.serial_log_path or NONE),
    ] + _saved_pairs(st) + _guest_pairs(st.guest), 2)
    if st.conditions:
        cond_lines = _indent(format_table(
            ("TYPE", "STATUS", "REASON", "LAST TRANSITION", "MESSAGE"),
            [(c.type, "True" if c.status else "False", c.reason or NONE,
              format_time(c.last_transition_time), c.message or "")
             for c in st.conditions]), 2)
    else:
        cond_lines = []
    if st.phase_transitions:
        prev: datetime | None = None
        rows = []
        for t in st.phase_transitions:
            when = _to_datetime(t.time) if _is_set(t.time) else None
            after = human_duration((when - prev).total_seconds()) if when and prev else ""
            rows.append((phase_name(t.phase), format_time(t.time),
                         format_age(t.time, now), after and f"+{after}"))
            prev = when or prev
        trans_lines = _indent(format_table(("PHASE", "TIME", "AGE", "AFTER PREVIOUS"), rows), 2)
    else:
        trans_lines = []
    runs_lines = _indent(format_table(
        ("RUN", "NODE", "STARTED", "ENDED", "PHASE", "REASON"),
        [(r.instance_uid[:8], r.node_name or NONE, format_time(r.start_time) if _is_set(r.start_time) else NONE,
          format_time(r.end_time), phase_name(r.phase), r.reason or NONE) for r in st.runs]), 2) if st.runs else []
    events_lines = _indent(format_table(
        ("TYPE", "REASON", "AGE", "MESSAGE"),
        [(_enum_name(vm_pb2.EventType, e.type, "EVENT_TYPE_"), e.reason, format_age(e.time, now), e.message)
         for e in list(st.events)[-EVENTS_SHOWN:]]), 2) if st.events else []
    lines = _block(_metadata_pairs(vm.metadata, now) + [
        ("Spec", spec_lines),
        ("Status", status_lines),
        ("Conditions", cond_lines),
        ("Phase Transitions", trans_lines),
        ("Runs", runs_lines),
        ("Events", events_lines),
    ])
    return "\n".join(lines)


EVENTS_SHOWN = 10


def _saved_pairs(st: vm_pb2.VirtualMachineStatus) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    if st.HasField("saved_state"):
        pairs.append(("Saved State", f"{st.saved_state.path} (node {st.saved_state.node_name}, "
                                     f"{format_time(st.saved_state.save_time)})"))
    if st.HasField("restore_from"):
        pairs.append(("Restored From", st.restore_from.path))
    return pairs


def _guest_pairs(guest: vm_pb2.GuestInfo) -> list[tuple[str, Any]]:
    """What the guest agent says; nothing when no agent ever answered."""
    if not guest.agent_connected:
        return []
    pairs: list[tuple[str, Any]] = [
        ("Guest Agent", "connected"),
        ("Guest OS", " ".join(p for p in (guest.os_name, guest.os_version) if p) or NONE),
        ("Guest Kernel", guest.kernel_release or NONE),
        ("Guest Hostname", guest.hostname or NONE),
    ]
    for interface in guest.interfaces:
        pairs.append((f"Interface {interface.name}",
                      " ".join([interface.mac_address or NONE, *interface.ip_addresses])))
    return pairs


def describe_node(node: node_pb2.Node, *, now: datetime | None = None) -> str:
    """The `corral describe node` block."""
    st = node.status
    lines = _block(_metadata_pairs(node.metadata, now) + [
        ("Spec", _block([("Unschedulable", str(node.spec.unschedulable).lower())], 2)),
        ("Status", _block([
            ("Status", node_status(st.phase)),
            ("Address", st.address or NONE),
            ("Hypervisor", st.hypervisor or NONE),
            ("Registered", _time_with_age(st.registered_time, now)),
            ("Virtual Machines", st.virtual_machine_count),
        ], 2)),
        ("Resources", _indent(format_table(
            ("RESOURCE", "ALLOCATED", "ALLOCATABLE", "CAPACITY"),
            [("vcpus", st.allocated.vcpus, allocatable(node).vcpus,
              f"{st.capacity.vcpus} (CPU allocation ratio {st.cpu_allocation_ratio or 1})"),
             ("memory", format_memory(st.allocated.memory_mib), format_memory(allocatable(node).memory_mib),
              format_memory(st.capacity.memory_mib))]), 2)),
    ])
    return "\n".join(lines)


# --- migrations ------------------------------------------------------------------------------

MIGRATION_COLUMNS = ("NAME", "VM", "PHASE", "SOURCE", "TARGET", "PROGRESS", "DOWNTIME", "AGE")


def migration_phase(phase: int) -> str:
    name = _enum_name(migration_pb2.MigrationPhase, phase, "MIGRATION_PHASE_")
    return name.replace(" ", "")


def migration_progress(st: migration_pb2.MigrationStatus) -> str:
    if not st.data_total_bytes:
        return NONE
    done = st.data_total_bytes - st.data_remaining_bytes
    return f"{100 * done / st.data_total_bytes:.0f}%"


def migration_row(m: migration_pb2.Migration, *, now: datetime | None = None) -> list[str]:
    st = m.status
    return [m.metadata.name, m.spec.vm_name, migration_phase(st.phase), st.source_node or NONE,
            st.target_node or m.spec.target_node or NONE, migration_progress(st),
            f"{st.downtime_ms}ms" if st.phase == migration_pb2.MIGRATION_PHASE_SUCCEEDED else NONE,
            format_age(m.metadata.create_time, now)]


def migration_table(items: Iterable[migration_pb2.Migration], *, now: datetime | None = None) -> str:
    """The `corral get migrations` table."""
    return format_table(MIGRATION_COLUMNS, [migration_row(m, now=now) for m in items])


def describe_migration(m: migration_pb2.Migration, *, now: datetime | None = None) -> str:
    st = m.status
    mode = _enum_name(migration_pb2.MigrationMode, st.mode, "MIGRATION_MODE_") if st.mode else NONE
    rows = _block(_metadata_pairs(m.metadata, now) + [
        ("VM", m.spec.vm_name),
        ("Phase", migration_phase(st.phase)),
        ("Source", f"{st.source_node or NONE} (run {st.source_instance_uid or NONE})"),
        ("Target", st.target_node or m.spec.target_node or NONE),
        ("Mode", mode),
        ("Progress", migration_progress(st)),
        ("Memory", f"{st.data_processed_bytes / 2**20:.0f} MiB moved, {st.data_remaining_bytes / 2**20:.0f} MiB left, "
                   f"{st.data_total_bytes / 2**20:.0f} MiB total" if st.data_total_bytes else NONE),
        ("Downtime", f"{st.downtime_ms} ms" if st.downtime_ms else NONE),
        ("Started", format_time(st.start_time) if _is_set(st.start_time) else NONE),
        ("Ended", format_time(st.end_time) if _is_set(st.end_time) else NONE),
        ("Cancel Requested", "yes" if st.cancel_requested else "no"),
        ("Reason", st.reason or NONE),
        ("Message", st.message or NONE),
        ("Phase Transitions", _indent(format_table(
            ("PHASE", "TIME"), [(migration_phase(t.phase), format_time(t.time)) for t in st.phase_transitions]), 2)
         if st.phase_transitions else []),
    ])
    return "\n".join(rows)
