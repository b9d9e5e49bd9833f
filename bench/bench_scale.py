#!/usr/bin/env python3
"""Benchmark: many VMs on many SIMULATED nodes (corral-simnodes: the real handler protocol,
VMs as libvirt test-driver domains, no QEMU). A benchmark, not a test: it prints figures.

    .venv/bin/python bench/bench_scale.py --nodes 100 --vms 1000 [--standbys 2] [--clients 16]

It starts its own etcd, one controller plus standbys, and one corral-simnodes process with
the nodes; creates the VMs through the API from parallel clients; and waits (one
WatchVirtualMachines stream) until every VM is Running. Meanwhile a prober calls
GetVirtualMachine every 50 ms. The last line is one JSON object:

    nodes, vms, running, seconds_to_all_running, vms_per_second, api_p99_seconds (creates and
    probes together), create_p99_seconds, probe_p99_seconds, controller_cpu_ms_per_vm (leader,
    user+system from /proc), controller_rss_mib (leader, at the end), etcd_writes_per_vm (etcd
    revisions consumed per VM: each write transaction is one, however many keys it puts),
    etcd_puts_per_vm (keys written per VM, etcd_mvcc_put_total), etcd_db_mib.
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from corral.store import Store  # noqa: E402
from corral.v1 import vm_pb2, vm_pb2_grpc  # noqa: E402
from tests.cluster import Cluster, Etcd, simulated_vm, wait_for  # noqa: E402

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING


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


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="cbs-", dir="/tmp"))
        self.etcd = Etcd(self.work)
        self.cluster: Cluster | None = None
        self.sim: subprocess.Popen | None = None
        self.latencies: dict[str, list[float]] = {"create": [], "probe": []}
        self.running_at: dict[str, float] = {}
        self.stop = threading.Event()

    def start(self) -> None:
        self.etcd.start()
        self.cluster = Cluster(etcd=self.etcd, base=self.work, prefix="/scale/", guest_dir=self.work)
        for index in range(1 + self.args.standbys):
            self.cluster.start_controller(f"c{index + 1}")
            if index == 0:
                time.sleep(1.0)  # c1 leads
        vcpus = max(4, -(-self.args.vms // self.args.nodes) // 10 + 2)
        with open(self.work / "simnodes.log", "ab") as log:
            self.sim = subprocess.Popen(
                [sys.executable, "-m", "handler.simnodes", "--count", str(self.args.nodes),
                 "--servers", self.cluster.servers, "--etcd-endpoints", self.etcd.endpoint,
                 "--etcd-prefix", "/scale/", "--vcpus", str(vcpus), "--log-level", "WARNING"],
                cwd=REPO, env=self.cluster.env(), stdout=log, stderr=subprocess.STDOUT)
        from corral.v1 import node_pb2
        wait_for(lambda: len(self.cluster.nodes.ListNodes(node_pb2.ListNodesRequest(page_size=1000),
                                                          timeout=30).nodes) >= min(self.args.nodes, 1000),
                 timeout=300, interval=1.0, what="the simulated nodes")
        time.sleep(2.0)  # every node's assignment stream open

    def leader_pid(self) -> int:
        store = Store(endpoints=[self.etcd.endpoint], prefix="/scale/")
        try:
            name = store.range(store.raw_key("leader")).kvs[0].value.decode()
        finally:
            store.close()
        return self.cluster.controllers[name][0].pid

    def revision(self) -> tuple[int, float]:
        store = Store(endpoints=[self.etcd.endpoint], prefix="/scale/")
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

    def watch_running(self) -> None:
        channel = grpc.insecure_channel(self.cluster.controllers["c2" if "c2" in self.cluster.controllers
                                                                   else "c1"][1])
        stub = vm_pb2_grpc.VirtualMachineServiceStub(channel)
        stream = stub.WatchVirtualMachines(vm_pb2.WatchVirtualMachinesRequest(label_selector="bench=scale"))
        try:
            for event in stream:
                vm = event.virtual_machine
                if vm.status.phase == RUNNING and vm.metadata.name not in self.running_at:
                    self.running_at[vm.metadata.name] = time.monotonic()
                if self.stop.is_set():
                    return
        except grpc.RpcError:
            return

    def probe(self) -> None:
        channel = grpc.insecure_channel(self.cluster.controllers["c1"][1])
        stub = vm_pb2_grpc.VirtualMachineServiceStub(channel)
        while not self.stop.wait(0.05):
            t0 = time.monotonic()
            try:
                stub.GetVirtualMachine(vm_pb2.GetVirtualMachineRequest(name="vm-000000"), timeout=10)
            except grpc.RpcError:
                pass  # NOT_FOUND before it exists: still an answer
            self.latencies["probe"].append(time.monotonic() - t0)

    def run(self) -> dict:
        self.start()
        leader = self.leader_pid()
        names = [f"vm-{index:06d}" for index in range(self.args.vms)]
        revision0, _ = self.revision()
        puts0 = self.etcd_puts()
        cpu0 = cpu_seconds(leader)
        threading.Thread(target=self.watch_running, daemon=True).start()
        threading.Thread(target=self.probe, daemon=True).start()
        time.sleep(0.5)
        channels = [grpc.insecure_channel(address) for _, address in self.cluster.controllers.values()]
        stubs = [vm_pb2_grpc.VirtualMachineServiceStub(channel) for channel in channels]
        t0 = time.monotonic()

        def create(index: int) -> None:
            began = time.monotonic()
            stubs[index % len(stubs)].CreateVirtualMachine(
                vm_pb2.CreateVirtualMachineRequest(virtual_machine=small_vm(names[index])), timeout=60)
            self.latencies["create"].append(time.monotonic() - began)

        with futures.ThreadPoolExecutor(self.args.clients) as pool:
            list(pool.map(create, range(len(names))))
        deadline = t0 + self.args.timeout
        while len(self.running_at) < len(names) and time.monotonic() < deadline:
            time.sleep(0.2)
        finished = max(self.running_at.values()) if len(self.running_at) == len(names) else float("nan")
        self.stop.set()
        cpu = cpu_seconds(leader) - cpu0
        revision1, db_mib = self.revision()
        puts = self.etcd_puts() - puts0
        seconds = finished - t0
        both = self.latencies["create"] + self.latencies["probe"]
        deleted_after = self.delete_all(names, stubs) if self.args.delete else None
        return {
            "nodes": self.args.nodes, "vms": self.args.vms, "running": len(self.running_at),
            "seconds_to_all_running": round(seconds, 2),
            "vms_per_second": round(len(names) / seconds, 1) if seconds == seconds else 0.0,
            "api_p99_seconds": round(percentile(both, 99), 3),
            "create_p99_seconds": round(percentile(self.latencies["create"], 99), 3),
            "probe_p99_seconds": round(percentile(self.latencies["probe"], 99), 3),
            "controller_cpu_ms_per_vm": round(cpu * 1000 / len(names), 2),
            "controller_rss_mib": round(rss_mib(leader), 1),
            "etcd_writes_per_vm": round((revision1 - revision0) / len(names), 2),
            "etcd_puts_per_vm": round(puts / len(names), 2),
            "etcd_db_mib": round(db_mib, 1),
            **({"seconds_to_all_deleted": round(deleted_after, 2)} if deleted_after is not None else {}),
        }

    def delete_all(self, names: list[str], stubs: list) -> float:
        """Delete every VM through the API; seconds until the last is gone (its node released it)."""
        t0 = time.monotonic()
        with futures.ThreadPoolExecutor(self.args.clients) as pool:
            list(pool.map(lambda i: stubs[i % len(stubs)].DeleteVirtualMachine(
                vm_pb2.DeleteVirtualMachineRequest(name=names[i]), timeout=60), range(len(names))))
        deadline = t0 + self.args.timeout
        while time.monotonic() < deadline:
            left = stubs[0].ListVirtualMachines(vm_pb2.ListVirtualMachinesRequest(
                page_size=1, label_selector="bench=scale"), timeout=60).virtual_machines
            if not left:
                return time.monotonic() - t0
            time.sleep(0.5)
        return float("nan")

    def close(self) -> None:
        self.stop.set()
        if self.sim is not None:
            self.sim.send_signal(signal.SIGTERM)
            try:
                self.sim.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.sim.kill()
        if self.cluster is not None:
            self.cluster.close()
        self.etcd.stop()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--standbys", type=int, default=2, help="controller replicas besides the leader")
    parser.add_argument("--clients", type=int, default=16, help="parallel API clients creating VMs")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--delete", action="store_true", help="then delete them all (seconds_to_all_deleted)")
    parser.add_argument("--keep", action="store_true", help=f"keep the logs (in /tmp/cbs-*)")
    args = parser.parse_args()
    bench = Bench(args)
    try:
        result = bench.run()
    finally:
        bench.close()
    print(json.dumps(result))
    return 0 if result["running"] == args.vms else 1


if __name__ == "__main__":
    sys.exit(main())
