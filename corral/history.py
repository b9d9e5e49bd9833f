"""A VM's events and ended runs live beside it, not in it: one etcd key each under
``vm-history/NAME/`` (``e/`` events, ``r/`` runs), bound to a lease so they expire as
Kubernetes events do (events after an hour, run records after a week). The VM's own key stays
small, so the status writes that make up most of the traffic rewrite a few hundred bytes, and
the watch cache, handlers and watchers never decode history they do not show.

Writers keep recording into ``vm.status.events`` / ``vm.status.runs`` of the object they are
about to write (corral.status.record_event); the store moves those entries to their keys in
the same transaction (``split``). Objects read from the VM key carry none; GetVirtualMachine
puts the most recent back (``merge``) for `corral describe`."""
from __future__ import annotations

import itertools
import os
import time

from corral.status import MAX_EVENTS, MAX_RUNS
from corral.v1 import vm_pb2

FOLDER = "vm-history/"
EVENT_TTL_SECONDS = 3600
RUN_TTL_SECONDS = 7 * 24 * 3600
_unique = itertools.count()
_process = os.urandom(3).hex()


def folder(vm_name: str) -> str:
    return f"{FOLDER}{vm_name}/"


def split(vm: vm_pb2.VirtualMachine) -> list[tuple[str, bytes, int]]:
    """Take the events and run records out of ``vm``: (key suffix, value, TTL seconds) each."""
    entries = []
    base = folder(vm.metadata.name)
    for event in vm.status.events:
        when = event.time.ToNanoseconds() or time.time_ns()
        entries.append((f"{base}e/{when:020d}-{_process}-{next(_unique):06d}", event.SerializeToString(),
                        EVENT_TTL_SECONDS))
    for run in vm.status.runs:  # keyed by the run: recording the same end twice writes one record
        entries.append((f"{base}r/{run.start_time.ToNanoseconds():020d}-{run.instance_uid}",
                        run.SerializeToString(), RUN_TTL_SECONDS))
    vm.status.ClearField("events")
    vm.status.ClearField("runs")
    return entries


def merge(vm: vm_pb2.VirtualMachine, values: list[tuple[str, bytes]]) -> vm_pb2.VirtualMachine:
    """Put the most recent events and runs (``values``: (key suffix after the VM's folder,
    value) in key order) back into ``vm``."""
    events = [value for key, value in values if key.startswith("e/")][-MAX_EVENTS:]
    runs = [value for key, value in values if key.startswith("r/")][-MAX_RUNS:]
    vm.status.ClearField("events")
    vm.status.ClearField("runs")
    for value in events:
        vm.status.events.add().MergeFromString(value)
    for value in runs:
        vm.status.runs.add().MergeFromString(value)
    return vm
