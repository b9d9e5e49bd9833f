"""Tables and describe blocks for VirtualMachineSnapshots (`corral get/describe snapshots`)."""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from corral.printing import NONE, _block, _enum_name, _indent, _is_set, _metadata_pairs, format_age, format_table, format_time
from corral.v1 import snapshot_pb2

S = snapshot_pb2
SNAPSHOT_COLUMNS = ("NAME", "VM", "PHASE", "READY", "INDICATIONS", "DISKS", "RESTORE", "AGE")


def snapshot_phase(phase: int) -> str:
    return _enum_name(S.SnapshotPhase, phase, "SNAPSHOT_PHASE_").replace(" ", "")


def restore_phase(phase: int) -> str:
    return _enum_name(S.RestorePhase, phase, "RESTORE_PHASE_").replace(" ", "") if phase else NONE


def snapshot_row(s: S.VirtualMachineSnapshot, *, now: datetime | None = None) -> list[str]:
    st = s.status
    ready = "true" if st.phase == S.SNAPSHOT_PHASE_SUCCEEDED and not s.metadata.HasField("delete_time") else "false"
    return [s.metadata.name, s.spec.vm_name, snapshot_phase(st.phase) + (" (deleting)" if s.metadata.HasField("delete_time") else ""),
            ready, ",".join(st.indications) or NONE, ",".join(d.name for d in st.disks) or NONE,
            restore_phase(st.restore.phase), format_age(s.metadata.create_time, now)]


def snapshot_table(items: Iterable[S.VirtualMachineSnapshot], *, wide: bool = False, now: datetime | None = None) -> str:
    """The `corral get snapshots` table."""
    return format_table(SNAPSHOT_COLUMNS, [snapshot_row(s, now=now) for s in items])


def describe_snapshot(s: S.VirtualMachineSnapshot, *, now: datetime | None = None) -> str:
    st = s.status
    restore = st.restore
    rows = _block(_metadata_pairs(s.metadata, now) + [
        ("VM", f"{s.spec.vm_name} (uid {st.vm_uid or NONE})"),
        ("Phase", snapshot_phase(st.phase)),
        ("Node", st.node_name or NONE),
        ("Taken Of", f"run {st.instance_uid} (running)" if st.instance_uid else "the stopped VM"),
        ("Created", format_time(st.creation_time) if _is_set(st.creation_time) else NONE),
        ("Indications", ", ".join(st.indications) or NONE),
        ("Disks", _indent(format_table(("NAME", "PATH", "TAG"), [(d.name, d.path, d.tag) for d in st.disks]), 2)
         if st.disks else NONE),
        ("Skipped Disks", ", ".join(st.skipped_disks) or NONE),
        ("Conditions", _indent(format_table(("TYPE", "STATUS", "REASON", "MESSAGE"), [
            (c.type, str(c.status), c.reason or NONE, c.message or NONE) for c in st.conditions]), 2)
         if st.conditions else NONE),
        ("Restore", NONE if not restore.phase else
         f"{restore_phase(restore.phase)}{' then start' if restore.start else ''}"
         f"{': ' + restore.message if restore.message else ''}"
         f" (started {format_time(restore.start_time)}"
         f"{', ended ' + format_time(restore.end_time) if _is_set(restore.end_time) else ''})"),
    ])
    return "\n".join(rows)
