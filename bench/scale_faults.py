"""What bench_scale.py needs to survive and judge its failure scenarios (--kill-leader-at,
--vanish): API calls that go to another controller replica when one is down; the leader key
followed (who leads, and the CPU each leader uses while leading); the checks at the end, from
the final List and the simulated nodes' --record files (a line NODE VM INSTANCE_UID per run
started)."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc

from corral.store import DELETE_EVENT, Store, StoreError
from corral.v1 import pool_pb2_grpc, vm_pb2, vm_pb2_grpc

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
#: What checks() returns: each must be 0.
VERDICTS = ("vms_lost", "vms_not_running_at_end", "vms_started_twice", "vms_running_on_two_live_nodes",
            "vms_final_run_not_recorded")


class Replicas:
    """One VirtualMachineService stub (and one VirtualMachinePoolService stub) per controller replica. A call that meets an UNAVAILABLE
    replica (killed, or killed while answering) is made again on the next one, as a client
    given every replica's address would do."""

    def __init__(self, addresses: dict[str, str]) -> None:
        self.names = list(addresses)
        self.channels = {name: grpc.insecure_channel(address) for name, address in addresses.items()}
        self.stubs = {name: vm_pb2_grpc.VirtualMachineServiceStub(channel) for name, channel in self.channels.items()}
        self.pool_stubs = {name: pool_pb2_grpc.VirtualMachinePoolServiceStub(channel)
                           for name, channel in self.channels.items()}

    def call(self, first: int, method: str, request, *, timeout: float, created_if_exists: bool = False,
             pools: bool = False):
        """(answer, how many times a replica was UNAVAILABLE first). With created_if_exists, a
        create retried after a failure that answers ALREADY_EXISTS was made by the failed try:
        the answer is then None. Other errors, and the last UNAVAILABLE after three rounds, raise."""
        failed = 0
        rounds = 3 * len(self.names)
        for attempt in range(rounds):
            stub = (self.pool_stubs if pools else self.stubs)[self.names[(first + attempt) % len(self.names)]]
            try:
                return getattr(stub, method)(request, timeout=timeout), failed
            except grpc.RpcError as exc:
                if created_if_exists and failed and exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                    return None, failed
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == rounds - 1:
                    raise
                failed += 1
                if failed % len(self.names) == 0:
                    time.sleep(0.5)  # every replica refused: give them time
        raise AssertionError("unreachable")

    def list_all(self, selector: str) -> dict[str, vm_pb2.VirtualMachine]:
        """Every VM with the label, page by page (one store snapshot), from a replica that answers."""
        found: dict[str, vm_pb2.VirtualMachine] = {}
        token = ""
        while True:
            page, _ = self.call(0, "ListVirtualMachines", vm_pb2.ListVirtualMachinesRequest(
                page_size=1000, label_selector=selector, page_token=token), timeout=60)
            found.update((vm.metadata.name, vm) for vm in page.virtual_machines)
            token = page.next_page_token
            if not token:
                return found

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


class LeaderTracker:
    """Who holds the leader key, followed by a watch on it from the moment it is made. Each
    holder's CPU time is sampled when it is seen taking the key and when it is seen losing it,
    or just before the bench kills it (ended_by_kill), so that the leader's CPU can be summed
    across leader changes, planned or not."""

    def __init__(self, endpoint: str, prefix: str, cpu_of: Callable[[str], float]) -> None:
        self._cpu_of = cpu_of
        self.terms: list[dict] = []  # name, since (monotonic), cpu_since, cpu_until (None: still leading)
        self.lock = threading.Lock()
        self.store = Store(endpoints=[endpoint], prefix=prefix)
        key = self.store.raw_key("leader")
        current = self.store.range(key)
        if current.kvs:
            self._begin(current.kvs[0].value.decode())
        self.watch = self.store.watch_key(key, start_revision=current.header.revision + 1)
        threading.Thread(target=self._follow, name="leader-tracker", daemon=True).start()

    def _follow(self) -> None:
        try:
            for response in self.watch.responses(timeout=0.5):
                for event in response.events if response is not None else ():
                    with self.lock:
                        holder = "" if event.type == DELETE_EVENT else event.kv.value.decode()
                        if self.current and self.current["name"] != holder:
                            self._end(self.current, self.cpu_of(self.current["name"]))
                        if holder and not self.current:
                            self._begin(holder)
        except StoreError:
            pass  # closed at the end, or etcd gone: the terms so far stand

    def cpu_of(self, name: str) -> float:
        try:
            return self._cpu_of(name)
        except OSError:
            return float("nan")  # a replica that died by itself: its share is unknown

    @property
    def current(self) -> dict | None:
        return self.terms[-1] if self.terms and self.terms[-1]["cpu_until"] is None else None

    def _begin(self, name: str) -> None:
        self.terms.append({"name": name, "since": time.monotonic(), "cpu_since": self.cpu_of(name),
                           "cpu_until": None})

    def _end(self, term: dict, cpu: float) -> None:
        term["cpu_until"] = cpu

    def ended_by_kill(self, name: str) -> None:
        """The bench is about to kill this replica: its term ends here, with its CPU time now."""
        with self.lock:
            if self.current and self.current["name"] == name:
                self._end(self.current, self.cpu_of(name))

    def first_since(self, moment: float) -> float:
        """Seconds from moment until a replica was seen taking the key after it (nan if none)."""
        return next((term["since"] - moment for term in self.terms if term["since"] > moment), float("nan"))

    def leader_cpu(self) -> float:
        """CPU seconds the leaders used while leading (the current one: up to now)."""
        with self.lock:
            return sum((term["cpu_until"] if term["cpu_until"] is not None else self.cpu_of(term["name"]))
                       - term["cpu_since"] for term in self.terms)

    def holders(self) -> list[str]:
        return [term["name"] for term in self.terms]

    def close(self) -> None:
        self.watch.close()
        self.store.close()


def await_leases_gone(endpoint: str, prefix: str, nodes: set[str], *, timeout: float) -> bool:
    """Poll every 100 ms until none of the nodes' heartbeat keys is left (their leases expired)."""
    from controller.nodes import ready_node_names  # noqa: PLC0415 - bench-only import
    store = Store(endpoints=[endpoint], prefix=prefix)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not nodes & ready_node_names(store):
                return True
            time.sleep(0.1)
        return False
    finally:
        store.close()


def read_starts(paths: Iterable[Path]) -> dict[str, list[tuple[str, str]]]:
    """VM name -> [(node, instance uid)] of every run the simulated nodes started."""
    starts: dict[str, list[tuple[str, str]]] = {}
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) == 3:  # a line cut by SIGKILL is not a start
                node, vm, uid = parts
                starts.setdefault(vm, []).append((node, uid))
    return starts


def checks(names: list[str], final: dict[str, vm_pb2.VirtualMachine], starts: dict[str, list[tuple[str, str]]],
           *, vanished: set[str], moved: set[str]) -> dict[str, int]:
    """The failure scenarios' verdicts, each of which must be 0.

    vms_lost: created, missing from the final List. vms_not_running_at_end: listed but not
    Running on a live node. vms_started_twice: more than one run started (the same run twice
    counts too), VMs that were on vanished nodes (moved) left out. vms_running_on_two_live_nodes:
    more than one run started on nodes that did not vanish (simulated nodes end a run only when
    asked to, and nothing is stopped or deleted before this check, so every such start is
    still running). vms_final_run_not_recorded: Running per the List, but no node recorded
    starting that run there."""
    live_starts = {vm: {start for start in runs if start[0] not in vanished} for vm, runs in starts.items()}
    return {
        "vms_lost": sum(1 for name in names if name not in final),
        "vms_not_running_at_end": sum(1 for vm in final.values()
                                      if vm.status.phase != RUNNING or vm.status.node_name in vanished),
        "vms_started_twice": sum(1 for vm, runs in starts.items() if vm not in moved and len(runs) > 1),
        "vms_running_on_two_live_nodes": sum(1 for runs in live_starts.values() if len(runs) > 1),
        "vms_final_run_not_recorded": sum(
            1 for vm in final.values() if vm.status.phase == RUNNING
            and (vm.status.node_name, vm.status.instance_uid) not in starts.get(vm.metadata.name, [])),
    }
