"""Dedicated CPUs on a node (a VM's dedicated_cpu_placement): each such run gets host CPUs no
other dedicated run on this node holds, one per vCPU, pinned in its domain XML
(launcher/domain_xml.py). The scheduler (corral/scheduling.py) places no more dedicated vCPUs
on a node than it has CPUs; this picks which ones.

Root keeps the allocation in its own records directory (STATE_DIR/runs/UID.cpuset, beside the
run records: what a VM's user cannot rewrite); the launcher reads a copy in its VM directory.
A record whose run directory is gone frees its CPUs.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from corral.rundir import CPUSET_FILE, format_cpuset, parse_cpuset  # noqa: F401 (CPUSET_FILE: handler.launchers)

log = logging.getLogger(__name__)

RECORD_SUFFIX = ".cpuset"

_lock = threading.Lock()  # runs start on the agent's thread and migrations arrive on others


def choose(host: list[int], taken: set[int], count: int) -> tuple[int, ...] | None:
    """``count`` free CPUs, highest first (CPU 0 takes the host's interrupts and daemons last);
    None when too few are free."""
    free = [cpu for cpu in sorted(host, reverse=True) if cpu not in taken]
    return tuple(sorted(free[:count])) if len(free) >= count else None


def taken_cpus(records_dir: Path, live: set[str]) -> set[int]:
    """CPUs held by the runs in ``live`` (names of run directories that still exist)."""
    taken: set[int] = set()
    for record in records_dir.glob(f"*{RECORD_SUFFIX}"):
        if record.name[:-len(RECORD_SUFFIX)] not in live:
            continue
        try:
            taken.update(parse_cpuset(record.read_text()))
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", record, exc)
    return taken


def allocate(vm_dir: Path, vcpus: int, host: list[int] | None = None) -> tuple[int, ...] | None:
    """Host CPUs for the run in ``vm_dir`` (kept if it already has them: a restarted handler or
    a re-created directory), recorded in root's records; None (logged) when the node has too
    few free: the run then fails (InsufficientDedicatedCPUs, handler/agent.py)."""
    records_dir = vm_dir.parent.parent / "runs"  # handler.vm_files.RUNS_DIR
    record = records_dir / f"{vm_dir.name}{RECORD_SUFFIX}"
    with _lock:
        try:
            mine = parse_cpuset(record.read_text())
            if len(mine) == vcpus:
                return mine
        except (OSError, ValueError):
            pass
        live = {path.name for path in vm_dir.parent.iterdir() if path.name != vm_dir.name}
        cpus = choose(host if host is not None else sorted(os.sched_getaffinity(0)),
                      taken_cpus(records_dir, live), vcpus)
        if cpus is None:
            log.error("run %s: %d dedicated CPUs asked, too few free on this node: the run fails",
                      vm_dir.name, vcpus)
            return None
        records_dir.mkdir(mode=0o700, exist_ok=True)
        record.write_text(format_cpuset(cpus))
        return cpus


def release(vm_dir: Path) -> None:
    (vm_dir.parent.parent / "runs" / f"{vm_dir.name}{RECORD_SUFFIX}").unlink(missing_ok=True)
