#!/usr/bin/env python3
"""Benchmark: many VMs on many SIMULATED nodes (corral-simnodes: the real handler protocol,
VMs as libvirt test-driver domains, no QEMU). A benchmark, not a test: it prints figures.

    .venv/bin/python bench/bench_scale.py --nodes 100 --vms 1000 [--standbys 2] [--clients 16]
    .venv/bin/python bench/bench_scale.py --nodes 100 --vms 1000 --kill-leader-at 0.5
    .venv/bin/python bench/bench_scale.py --nodes 100 --vms 1000 --vanish 10
    .venv/bin/python bench/bench_scale.py --nodes 1000 --vms 10000 --batch 100
    .venv/bin/python bench/bench_scale.py --nodes 1000 --vms 10000 --pools 10

It starts its own etcd, one controller plus standbys, and one corral-simnodes process with
the nodes; creates the VMs through the API from parallel clients; and waits (one
WatchVirtualMachines stream, from a replica that is not the leader) until every VM is
Running (with --batch N, each client call is a BatchCreateVirtualMachines of N VMs, all or
none, one etcd transaction; with --pools P, P VirtualMachinePools whose VMs the leader
makes). Meanwhile a prober calls GetVirtualMachine every 50 ms. The last line is one JSON
object:

    nodes, vms, running, seconds_to_all_running, vms_per_second, api_p99_seconds (creates and
    probes together), create_p99_seconds, probe_p99_seconds, controller_cpu_ms_per_vm (leader,
    user+system from /proc), controller_rss_mib (leader, at the end), etcd_writes_per_vm (etcd
    revisions consumed per VM: each write transaction is one, however many keys it puts),
    etcd_puts_per_vm (keys written per VM, etcd_mvcc_put_total), etcd_db_mib;
    controllers_cpu_ms_per_vm (all replicas together, a killed one up to its kill: the leader's
    share depends on which API calls, watch streams and nodes it serves); leaders (the
    replicas that held the leader key, in order, from the first create to the end).

The leader is followed through a watch on its key: if it changes during the storm (killed, or
a leader that could not renew its lease in time on a saturated machine),
controller_cpu_ms_per_vm sums each leader's CPU while it led (sampled when it is seen taking
and losing the key), so it still is the leader's work; the time without a leader is in no one's
share. Timestamped notes on stderr (kill times) match the logs kept with --keep.

Failure scenarios (issue #11), each adding keys to that line; every vms_* verdict must be 0
(see bench/scale_faults.py, checks(): vms_lost, vms_not_running_at_end, vms_started_twice,
vms_running_on_two_live_nodes, vms_final_run_not_recorded). Every simulated node records the
runs it starts (corral-simnodes --record) so that a VM started twice shows.

--kill-leader-at F: SIGKILL the leader's process once a fraction F of the VMs are created; the
standbys take over. Clients send a create or probe that meets the dead replica (UNAVAILABLE) to
the next one; a retried create answered ALREADY_EXISTS was made by the failed try and counts as
created. Latencies include those retries. Adds leader_killed_at_seconds (after the first create),
new_leader_after_seconds (kill to another replica holding the leader key), leader_lease_seconds,
creates_retried, creates_found_existing and the verdicts. controller_cpu_ms_per_vm is then the
old leader's CPU up to the kill (sampled just before it) plus the new leader's from the moment
it was seen holding the key (see above); controller_rss_mib is the new leader's. It is not
comparable with a run without a kill: the dead replica's clients, the prober and the simulated
nodes it served move to the next replica, and the watch stream is served by the first
standby; either may be the new leader. controllers_cpu_ms_per_vm compares.

--vanish N: N of the nodes live in a second corral-simnodes process; once every VM is Running
(all figures above are taken then), that process is SIGKILLed. Adds vanished_nodes,
vms_on_vanished_nodes, seconds_to_vanished_leases_expired (until etcd dropped all their
heartbeat keys), seconds_to_rescheduled (until every VM that was on them is Running on another
node, seen on the watch stream), and the verdicts (vms_started_twice leaves out the VMs that
were on vanished nodes). Most of that time is the deliberate fencing wait, reported with it:
node_lease_ttl_seconds (the simulated nodes' heartbeat lease; they renew it every quarter, so
it expires 0.75-1 TTL after the kill) plus node_loss_margin_seconds (the controller's wait
for a NotReady node to fence its guests), before the controller ends their runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from bench.scale_faults import (VERDICTS, LeaderTracker, Replicas, await_leases_gone, checks,  # noqa: E402
                                read_starts)
from corral.settings import ControllerSettings  # noqa: E402
from corral.store import Store  # noqa: E402
from corral.v1 import pool_pb2, vm_pb2  # noqa: E402
from tests.cluster import Cluster, Etcd, simulated_vm, wait_for  # noqa: E402

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
PREFIX = "/scale/"
LEADER_LEASE_SECONDS = 3  # the controllers' --leader-lease-seconds (tests/cluster.py's default)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def small_vm(name: str) -> vm_pb2.VirtualMachine:
    return simulated_vm(name, label=("bench", "scale"), memory_mib=256)


def fleet_pool(name: str, replicas: int) -> pool_pb2.VirtualMachinePool:
    """A pool of small_vm()s (labelled bench=scale, and pool=NAME for its selector)."""
    pool = pool_pb2.VirtualMachinePool()
    pool.metadata.name = name
    pool.spec.replicas = replicas
    pool.spec.selector = f"pool={name}"
    template = pool.spec.virtual_machine_template
    template.metadata.labels.update({"bench": "scale", "pool": name})
    template.spec.CopyFrom(small_vm(name).spec)
    template.spec.run_strategy = vm_pb2.RUN_STRATEGY_ALWAYS
    return pool


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="cbs-", dir="/tmp"))
        self.etcd = Etcd(self.work)
        self.cluster: Cluster | None = None
        self.sim: subprocess.Popen | None = None
        self.vanishing: subprocess.Popen | None = None  # --vanish: the nodes that vanish
        self.clients: list[Replicas] = []
        self.latencies: dict[str, list[float]] = {"create": [], "probe": []}
        self.running_at: dict[str, float] = {}
        self.where: dict[str, str] = {}  # VM -> the node it was last seen Running on
        self.moved: dict[str, str] = {}  # --vanish: VM -> the vanished node it was on
        self.rescheduled_at: dict[str, float] = {}
        self.storm_over = threading.Event()  # stops the prober
        self.stop = threading.Event()  # stops the watcher
        self.lock = threading.Lock()
        self.created = self.creates_retried = self.creates_found_existing = 0
        self.killed: set[str] = set()
        self.killed_at = float("nan")
        self.cpu_at_kill: dict[str, float] = {}
        self.leaders: LeaderTracker | None = None

    def start(self) -> None:
        self.etcd.start()
        self.cluster = Cluster(etcd=self.etcd, base=self.work, prefix=PREFIX, guest_dir=self.work)
        for index in range(1 + self.args.standbys):
            self.cluster.start_controller(f"c{index + 1}", lease_seconds=LEADER_LEASE_SECONDS)
            if index == 0:
                time.sleep(1.0)  # c1 leads
        vcpus = max(4, -(-self.args.vms // self.args.nodes) // 10 + 2)
        staying = self.args.nodes - self.args.vanish
        self.sim = self.simnodes("simnodes", count=staying, first=0, vcpus=vcpus)
        if self.args.vanish:
            self.vanishing = self.simnodes("simnodes-vanishing", count=self.args.vanish, first=staying, vcpus=vcpus)
        from corral.v1 import node_pb2
        wait_for(lambda: len(self.cluster.nodes.ListNodes(node_pb2.ListNodesRequest(page_size=1000),
                                                          timeout=30).nodes) >= min(self.args.nodes, 1000),
                 timeout=300, interval=1.0, what="the simulated nodes")
        time.sleep(2.0)  # every node's assignment stream open

    def simnodes(self, name: str, *, count: int, first: int, vcpus: int) -> subprocess.Popen:
        """A corral-simnodes process for nodes sim-FIRST on; it records the runs it starts in NAME.starts."""
        with open(self.work / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "handler.simnodes", "--count", str(count), "--first-index", str(first),
                 "--servers", self.cluster.servers, "--vcpus", str(vcpus), "--log-level", "WARNING",
                 "--heartbeat-seconds", str(self.args.node_heartbeat_seconds),
                 "--record", str(self.work / f"{name}.starts")],
                cwd=REPO, env=self.cluster.env(), stdout=log, stderr=subprocess.STDOUT)

    def pid(self, replica: str) -> int:
        return self.cluster.controllers[replica][0].pid

    def revision(self) -> tuple[int, float]:
        store = Store(endpoints=[self.etcd.endpoint], prefix=PREFIX)
        try:
            from pyetcd import etcdrpc  # noqa: PLC0415
            status = store._call(etcdrpc.MaintenanceStub, "Status", etcdrpc.StatusRequest())
            return status.header.revision, status.dbSize / 2**20
        finally:
            store.close()

    def etcd_puts(self) -> float:
        """Keys written so far (etcd_mvcc_put_total): a batched transaction counts each of its puts."""
        import urllib.request  # noqa: PLC0415
        with urllib.request.urlopen(f"{self.etcd.endpoint}/metrics", timeout=10) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith("etcd_mvcc_put_total "):
                    return float(line.split()[1])
        return float("nan")

    def watch_running(self, replicas: Replicas, order: list[str]) -> None:
        """Follow the VMs from one replica; if its stream breaks, resume on the next one still alive
        after the last revision seen whole (changes written together share a revision: corral's
        Client.watch_vms) (the stream opens before any VM exists: no initial listing)."""
        revision = latest = attempt = 0
        while not self.stop.is_set():
            name = order[attempt % len(order)]
            attempt += 1
            if name in self.killed:
                continue
            stream = replicas.stubs[name].WatchVirtualMachines(vm_pb2.WatchVirtualMachinesRequest(
                label_selector="bench=scale", resource_version=revision))
            try:
                for event in stream:
                    if event.resource_version > latest:
                        revision, latest = latest, event.resource_version
                    self.seen(event.virtual_machine)
                    if self.stop.is_set():
                        return
            except grpc.RpcError:
                self.stop.wait(0.2)

    def seen(self, vm: vm_pb2.VirtualMachine) -> None:
        if vm.status.phase != RUNNING:
            return
        name, node, now = vm.metadata.name, vm.status.node_name, time.monotonic()
        self.running_at.setdefault(name, now)
        self.where[name] = node
        if name in self.moved and node != self.moved[name]:
            self.rescheduled_at.setdefault(name, now)

    def probe(self, replicas: Replicas) -> None:
        """GetVirtualMachine of the first VM every 50 ms, on c1 first; a replica that fails is left
        for the next."""
        current = 0
        while not self.storm_over.wait(0.05):
            t0 = time.monotonic()
            for _ in replicas.names:
                try:
                    replicas.stubs[replicas.names[current]].GetVirtualMachine(
                        vm_pb2.GetVirtualMachineRequest(name=self.probed_name), timeout=10)
                    break
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.NOT_FOUND:
                        break  # before it exists: still an answer
                    current = (current + 1) % len(replicas.names)
            self.latencies["probe"].append(time.monotonic() - t0)

    def kill_leader(self, name: str) -> None:
        """SIGKILL the leader's process, its CPU time sampled just before."""
        self.leaders.ended_by_kill(name)
        self.cpu_at_kill[name] = cpu_seconds(self.pid(name))
        process = self.cluster.controllers[name][0]
        process.send_signal(signal.SIGKILL)
        self.killed_at = time.monotonic()
        self.killed.add(name)
        process.wait()
        note(f"killed the leader {name}")

    def run(self) -> dict:
        self.start()
        per_pool = self.args.vms // self.args.pools if self.args.pools else 0
        names = [f"fleet-{index // per_pool}-{index % per_pool}" for index in range(self.args.vms)] if per_pool \
            else [f"vm-{index:06d}" for index in range(self.args.vms)]
        self.probed_name = names[0]
        revision0, _ = self.revision()
        puts0 = self.etcd_puts()
        self.leaders = LeaderTracker(self.etcd.endpoint, PREFIX, lambda name: cpu_seconds(self.pid(name)))
        replicas_cpu0 = {name: cpu_seconds(self.pid(name)) for name in self.cluster.controllers}
        leader = self.leaders.holders()[0]
        addresses = {name: address for name, (_, address) in self.cluster.controllers.items()}
        self.replicas, watched, probed = (Replicas(addresses) for _ in range(3))  # a channel set each
        self.clients += [self.replicas, watched, probed]
        order = [name for name in addresses if name != leader] + [leader]
        threading.Thread(target=self.watch_running, args=(watched, order), daemon=True).start()
        threading.Thread(target=self.probe, args=(probed,), daemon=True).start()
        time.sleep(0.5)
        kill_after = max(1, int(self.args.kill_leader_at * len(names))) if self.args.kill_leader_at else 0
        t0 = time.monotonic()

        size = self.args.batch

        def create(index: int) -> None:
            """VM number index (one CreateVirtualMachine), or with --batch the batch starting there."""
            began = time.monotonic()
            chunk = [small_vm(name) for name in names[index:index + size]]
            if size == 1:
                answer, failed = self.replicas.call(index, "CreateVirtualMachine", vm_pb2.CreateVirtualMachineRequest(
                    virtual_machine=chunk[0]), timeout=60, created_if_exists=True)
            else:  # all or none: ALREADY_EXISTS after a failed try means that try made them all
                answer, failed = self.replicas.call(index // size, "BatchCreateVirtualMachines",
                                                    vm_pb2.BatchCreateVirtualMachinesRequest(requests=[
                                                        vm_pb2.CreateVirtualMachineRequest(virtual_machine=vm)
                                                        for vm in chunk]), timeout=60, created_if_exists=True)
            self.latencies["create"].append(time.monotonic() - began)
            with self.lock:
                before = self.created
                self.created += len(chunk)
                self.creates_retried += bool(failed)
                self.creates_found_existing += answer is None
                if before < kill_after <= self.created:
                    self.kill_leader(leader)

        def create_pool(number: int) -> None:
            """A VirtualMachinePool of per_pool replicas: the leader makes its VMs."""
            began = time.monotonic()
            self.replicas.call(number, "CreateVirtualMachinePool", pool_pb2.CreateVirtualMachinePoolRequest(
                virtual_machine_pool=fleet_pool(f"fleet-{number}", per_pool)), timeout=60, created_if_exists=True,
                pools=True)
            self.latencies["create"].append(time.monotonic() - began)

        if per_pool:
            note(f"creating {self.args.pools} pools of {per_pool} VMs, {leader} leading")
            with futures.ThreadPoolExecutor(self.args.clients) as pool:
                list(pool.map(create_pool, range(self.args.pools)))
        else:
            note(f"creating {len(names)} VMs, {leader} leading" + (f", {size} per call" if size > 1 else ""))
            with futures.ThreadPoolExecutor(self.args.clients) as pool:
                list(pool.map(create, range(0, len(names), size)))
        note("all created")
        deadline = t0 + self.args.timeout
        while len(self.running_at) < len(names) and time.monotonic() < deadline:
            time.sleep(0.2)
        finished = max(self.running_at.values()) if len(self.running_at) == len(names) else float("nan")
        note(f"{len(self.running_at)} VMs seen Running")
        self.storm_over.set()
        cpu = self.leaders.leader_cpu()
        replicas_cpu = sum(self.cpu_at_kill.get(name) or cpu_seconds(self.pid(name)) for name in replicas_cpu0) \
            - sum(replicas_cpu0.values())
        measured = self.leaders.holders()[-1]
        revision1, db_mib = self.revision()
        puts = self.etcd_puts() - puts0
        seconds = finished - t0
        both = self.latencies["create"] + self.latencies["probe"]
        result = {
            "nodes": self.args.nodes, "vms": self.args.vms, "batch": self.args.batch, "pools": self.args.pools,
            "running": len(self.running_at),
            "seconds_to_all_running": round(seconds, 2),
            "vms_per_second": round(len(names) / seconds, 1) if seconds == seconds else 0.0,
            "api_p99_seconds": round(percentile(both, 99), 3),
            "create_p99_seconds": round(percentile(self.latencies["create"], 99), 3),
            "probe_p99_seconds": round(percentile(self.latencies["probe"], 99), 3),
            "controller_cpu_ms_per_vm": round(cpu * 1000 / len(names), 2),
            "controller_rss_mib": round(rss_mib(self.pid(measured)), 1),
            "etcd_writes_per_vm": round((revision1 - revision0) / len(names), 2),
            "etcd_puts_per_vm": round(puts / len(names), 2),
            "etcd_db_mib": round(db_mib, 1),
            "controllers_cpu_ms_per_vm": round(replicas_cpu * 1000 / len(names), 2),
        }
        if kill_after:
            result.update(self.kill_results(names, t0))
        if self.args.vanish:
            result.update(self.vanish(names))
        result["leaders"] = ",".join(self.leaders.holders())
        self.stop.set()
        if self.args.delete:
            result["seconds_to_all_deleted"] = round(self.delete_all(names), 2)
        return result

    def starts_files(self) -> list[Path]:
        return [self.work / "simnodes.starts", self.work / "simnodes-vanishing.starts"]

    def kill_results(self, names: list[str], t0: float) -> dict:
        return {
            "leader_killed_at_seconds": round(self.killed_at - t0, 2),
            "new_leader_after_seconds": round(self.leaders.first_since(self.killed_at), 2),
            "leader_lease_seconds": LEADER_LEASE_SECONDS,
            "creates_retried": self.creates_retried, "creates_found_existing": self.creates_found_existing,
            **checks(names, self.replicas.list_all("bench=scale"), read_starts(self.starts_files()),
                     vanished=set(), moved=set()),
        }

    def vanish(self, names: list[str]) -> dict:
        """SIGKILL the second simnodes process (all VMs Running by now); time until the VMs that
        were on its nodes are Running elsewhere, and until etcd dropped those nodes' leases."""
        vanished = {f"sim-{index:05d}" for index in range(self.args.nodes - self.args.vanish, self.args.nodes)}
        self.moved = {name: node for name, node in list(self.where.items()) if node in vanished}
        self.vanishing.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        self.vanishing.wait()
        note(f"killed the simulated nodes {min(vanished)} to {max(vanished)} ({len(self.moved)} VMs on them)")
        leases_gone: list[float] = []

        def await_expiry() -> None:
            if await_leases_gone(self.etcd.endpoint, PREFIX, vanished, timeout=self.args.timeout):
                leases_gone.append(time.monotonic())
        watcher = threading.Thread(target=await_expiry, daemon=True)
        watcher.start()
        deadline = t0 + self.args.timeout
        while len(self.rescheduled_at) < len(self.moved) and time.monotonic() < deadline:
            time.sleep(0.2)
        note(f"{len(self.rescheduled_at)} of them seen Running on another node")
        done = max(self.rescheduled_at.values(), default=t0) if len(self.rescheduled_at) == len(self.moved) \
            else float("nan")
        watcher.join(timeout=max(0.0, deadline - time.monotonic()))
        return {
            "vanished_nodes": len(vanished), "vms_on_vanished_nodes": len(self.moved),
            "seconds_to_vanished_leases_expired": round(leases_gone[0] - t0, 2) if leases_gone else float("nan"),
            "seconds_to_rescheduled": round(done - t0, 2),
            "node_lease_ttl_seconds": self.args.node_heartbeat_seconds,
            "node_loss_margin_seconds": node_loss_margin_seconds(),
            **checks(names, self.replicas.list_all("bench=scale"), read_starts(self.starts_files()),
                     vanished=vanished, moved=set(self.moved)),
        }

    def delete_all(self, names: list[str]) -> float:
        """Delete every VM through the API; seconds until the last is gone (its node released it)."""
        t0 = time.monotonic()
        with futures.ThreadPoolExecutor(self.args.clients) as pool:
            list(pool.map(lambda i: self.replicas.call(i, "DeleteVirtualMachine", vm_pb2.DeleteVirtualMachineRequest(
                name=names[i]), timeout=60), range(len(names))))
        deadline = t0 + self.args.timeout
        while time.monotonic() < deadline:
            left, _ = self.replicas.call(0, "ListVirtualMachines", vm_pb2.ListVirtualMachinesRequest(
                page_size=1, label_selector="bench=scale"), timeout=60)
            if not left.virtual_machines:
                return time.monotonic() - t0
            time.sleep(0.5)
        return float("nan")

    def close(self) -> None:
        self.stop.set()
        self.storm_over.set()
        for process in (self.sim, self.vanishing):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
        for replicas in self.clients:
            replicas.close()
        if self.leaders is not None:
            self.leaders.close()
        if self.cluster is not None:
            self.cluster.close()
        self.etcd.stop()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)


def note(what: str) -> None:
    """A timestamped line on stderr, to match the kept logs (their times are UTC)."""
    print(f"{datetime.now(timezone.utc).strftime('%H:%M:%S.%f')[:-3]}Z {what}", file=sys.stderr, flush=True)


def node_loss_margin_seconds() -> float:
    """What the controllers run with: the setting's default unless the environment sets it."""
    default = ControllerSettings.model_fields["node_loss_margin_seconds"].default
    return float(os.environ.get("CORRAL_NODE_LOSS_MARGIN_SECONDS", default))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--standbys", type=int, default=2, help="controller replicas besides the leader")
    parser.add_argument("--clients", type=int, default=16, help="parallel API clients creating VMs")
    parser.add_argument("--batch", type=int, default=1, metavar="N",
                        help="create N VMs per call (BatchCreateVirtualMachines, 1 to 100); 1: CreateVirtualMachine")
    parser.add_argument("--pools", type=int, default=0, metavar="P",
                        help="instead of creating VMs, create P VirtualMachinePools of VMS/P replicas each (at most "
                             "1000): the leader makes the VMs")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--delete", action="store_true", help="then delete them all (seconds_to_all_deleted)")
    parser.add_argument("--keep", action="store_true", help=f"keep the logs (in /tmp/cbs-*)")
    parser.add_argument("--kill-leader-at", type=float, default=0.0, metavar="F",
                        help="SIGKILL the leader controller once this fraction (0<F<1) of the VMs is created")
    parser.add_argument("--vanish", type=int, default=0, metavar="N",
                        help="once all are Running, SIGKILL the process of N of the nodes")
    parser.add_argument("--node-heartbeat-seconds", type=int, default=30,
                        help="the simulated nodes' lease TTL (corral-simnodes --heartbeat-seconds)")
    args = parser.parse_args()
    if args.kill_leader_at and not (0 < args.kill_leader_at < 1 and args.standbys >= 1):
        parser.error("--kill-leader-at needs 0 < F < 1 and at least one standby")
    if not 1 <= args.batch <= 100:
        parser.error("--batch N needs 1 <= N <= 100")
    if args.pools and (args.vms % args.pools or args.vms // args.pools > 1000 or args.batch > 1 or args.kill_leader_at):
        parser.error("--pools P needs VMS divisible by P into pools of at most 1000, and neither --batch nor "
                     "--kill-leader-at")
    if args.vanish and not 0 < args.vanish < args.nodes:
        parser.error("--vanish N needs 0 < N < --nodes")
    bench = Bench(args)
    try:
        result = bench.run()
    finally:
        bench.close()
    print(json.dumps(result))
    return 0 if result["running"] == args.vms and not any(result.get(key) for key in VERDICTS) else 1


if __name__ == "__main__":
    sys.exit(main())
