"""corral-simnodes: many simulated nodes in one process, for scale tests, benchmarks and for
trying Corral at size on one machine. SIMULATED: no launcher process, no QEMU, no guest boots.

Each simulated node speaks the real handler protocol (and, like corral-handler, holds no store
credentials): it registers its node record and keeps its heartbeat lease through the
controllers' HandlerService, follows WatchAssignments from the
controllers (reconnecting, rotating through them), takes the run's instance lock before a
start, runs each assigned VM as a domain of libvirt's test driver (``test:///default``: real
libvirt calls, kept in memory), reports phases with ReportVirtualMachineStatus, ends runs it is
asked to end (stop, restart, save: the run Succeeds) and removes deleted VMs
(ReleaseVirtualMachine). Left out: fencing deadlines, consoles, pause, migrations, devices.

Several processes can share a cluster, each with its own nodes (``--first-index``), so that a
benchmark can kill one process and make its nodes vanish at once. ``--record FILE`` appends a
line ``NODE VM INSTANCE_UID`` per run started, written out at once so that it survives a
SIGKILL: a VM started twice, or on two nodes, shows there.

All nodes share one asyncio loop and a few gRPC channels (thousands of streams, a handful of
threads).

    corral-simnodes --count 100 --servers 127.0.0.1:7100
    corral-simnodes --count 10 --first-index 100 --record /tmp/starts.txt ...   (sim-00100 to sim-00109)
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import sys
from dataclasses import dataclass, field
from typing import TextIO

import grpc
import libvirt

from corral import logs
from corral.v1 import handler_pb2, handler_pb2_grpc, vm_pb2
from handler.assignments import Tries, spread, turned_away_by_leader
from handler.node import node_record

log = logging.getLogger("corral.simnodes")

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
SUCCEEDED = vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED
STARTABLE = (vm_pb2.VIRTUAL_MACHINE_PHASE_SCHEDULED, RUNNING)
NODES_PER_CHANNEL = 100


def domain_xml(instance_uid: str, vm: vm_pb2.VirtualMachine) -> str:
    """A test-driver domain for the run (its name is the run's uid: unique in the process)."""
    import xml.etree.ElementTree as ET
    domain = ET.Element("domain", type="test")
    ET.SubElement(domain, "name").text = instance_uid
    ET.SubElement(domain, "memory", unit="MiB").text = str(vm.spec.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(vm.spec.vcpus)
    os_el = ET.SubElement(domain, "os")
    ET.SubElement(os_el, "type").text = "hvm"
    return ET.tostring(domain, encoding="unicode")


def _open_test_driver() -> libvirt.virConnect:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # "not found" is an answer here
    return libvirt.open("test:///default")


@dataclass
class Hypervisor:
    """libvirt's test driver, shared by every simulated node of the process."""

    conn: libvirt.virConnect = field(default_factory=lambda: _open_test_driver())

    def start(self, instance_uid: str, vm: vm_pb2.VirtualMachine) -> None:
        try:
            self.conn.lookupByName(instance_uid)
            return  # already running: a repeated assignment
        except libvirt.libvirtError:
            pass
        self.conn.createXML(domain_xml(instance_uid, vm), 0)

    def stop(self, instance_uid: str) -> None:
        try:
            self.conn.lookupByName(instance_uid).destroy()
        except libvirt.libvirtError:
            pass  # gone already


class SimNode:
    def __init__(self, *, name: str, sim: "SimCluster") -> None:
        self.name = name
        self.sim = sim
        self.lease = 0
        self.runs: dict[str, str] = {}  # instance uid -> VM name
        self.reported: dict[str, int] = {}  # instance uid -> phase reported
        self.tokens: dict[str, int] = {}
        # Which controller the node talks to (an offset from its own in stub_for): it moves on
        # when one fails and stays there, as a handler's channel does (ControllerStubs.rotate).
        self.server = 0

    # -- registration and heartbeat ------------------------------------------------------------
    async def register(self) -> None:
        record = node_record(name=self.name, labels={"corral.dev/simulated": "true", **self.sim.labels},
                             vcpus=self.sim.vcpus, memory_mib=self.sim.memory_mib, hypervisor="test",
                             cpu_allocation_ratio=self.sim.cpu_allocation_ratio)
        status = record.status
        while await self.call("RegisterNode", handler_pb2.RegisterNodeRequest(
                node_name=self.name, labels=record.metadata.labels, capacity=status.capacity,
                cpu_allocation_ratio=status.cpu_allocation_ratio, hypervisor=status.hypervisor)) is None:
            await asyncio.sleep(1.0)
        while not await self.grant():
            await asyncio.sleep(1.0)

    async def grant(self) -> bool:
        answer = await self.call("GrantNodeLease", handler_pb2.GrantNodeLeaseRequest(
            node_name=self.name, ttl_seconds=self.sim.ttl))
        if answer is not None:
            self.lease = answer.lease_id
        return answer is not None

    async def heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.sim.ttl / 4 * (0.9 + random.random() * 0.2))
            answer = await self.call("RenewNodeLease", handler_pb2.RenewNodeLeaseRequest(
                node_name=self.name, lease_id=self.lease))
            if answer is not None and answer.ttl_seconds <= 0:
                log.warning("node %s lost its lease: taking a new one", self.name)
                await self.grant()

    # -- assignments ---------------------------------------------------------------------------
    async def follow(self) -> None:
        failures = 0  # for the back-off
        tries = Tries(len(self.sim.servers))
        while True:
            stub = self.sim.stub_for(self.name, self.server)
            synced = False
            snapshot: dict[str, vm_pb2.VirtualMachine] = {}
            try:
                async for event in stub.WatchAssignments(handler_pb2.WatchAssignmentsRequest(
                        node_name=self.name, avoid_leader=tries.avoid_leader(self.server))):
                    vm = event.virtual_machine
                    if event.type == handler_pb2.ASSIGNMENT_EVENT_TYPE_SYNCED:
                        synced, failures = True, 0
                        tries.synced()
                        await self.resync(snapshot)
                    elif event.type == handler_pb2.ASSIGNMENT_EVENT_TYPE_UPSERT:
                        if synced:
                            await self.upsert(vm)
                        else:
                            snapshot[vm.metadata.name] = vm
                    elif event.type == handler_pb2.ASSIGNMENT_EVENT_TYPE_REMOVE:
                        if synced:
                            self.end_runs_of(vm.metadata.name)
                        else:
                            snapshot.pop(vm.metadata.name, None)
            except grpc.aio.AioRpcError as exc:
                if turned_away_by_leader(exc):  # when asked, or moved when it became leader
                    self.server += tries.failed(self.server, spread(self.name, len(self.sim.servers)))
                    continue  # at once: the others are there
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    log.warning("node %s: assignments stream: %s", self.name, exc.details())
            failures += 1
            self.server += tries.failed(self.server)
            await asyncio.sleep(min(0.2 * 2 ** min(failures, 5), 5.0) * random.random())

    async def resync(self, snapshot: dict[str, vm_pb2.VirtualMachine]) -> None:
        wanted = {vm.status.instance_uid for vm in snapshot.values()}
        for uid in [uid for uid in self.runs if uid not in wanted]:
            self.end_run(uid)
        for vm in snapshot.values():
            await self.upsert(vm)

    def end_runs_of(self, vm_name: str) -> None:
        for uid in [uid for uid, name in self.runs.items() if name == vm_name]:
            self.end_run(uid)

    def end_run(self, uid: str) -> None:
        self.sim.hypervisor.stop(uid)
        name = self.runs.pop(uid, None)
        self.reported.pop(uid, None)
        if name is not None:
            log.info("run ended: vm %s run %s node %s", name, uid, self.name)

    async def upsert(self, vm: vm_pb2.VirtualMachine) -> None:
        name, uid = vm.metadata.name, vm.status.instance_uid
        if vm.status.assignment_token < self.tokens.get(name, 0):
            return  # a deposed leader's late assignment
        self.tokens[name] = vm.status.assignment_token
        if vm.status.node_name != self.name or not uid:
            return  # an incoming migration: not simulated
        if vm.metadata.HasField("delete_time"):
            self.end_runs_of(name)
            await self.unlock(name, uid)
            await self.call("ReleaseVirtualMachine", handler_pb2.ReleaseVirtualMachineRequest(
                node_name=self.name, name=name, uid=vm.metadata.uid))
            return
        request = vm.status.run_request
        if uid in self.runs and request.action and request.instance_uid == uid:
            self.end_run(uid)
            await self.report(vm, uid, SUCCEEDED, "Stopped", "stopped on request (simulated node)")
            await self.unlock(name, uid)
            return
        if uid not in self.runs and vm.status.phase in STARTABLE and uid not in self.reported:
            if not await self.lock(vm):
                return
            self.sim.hypervisor.start(uid, vm)
            self.runs[uid] = name
            log.info("run started: vm %s run %s node %s", name, uid, self.name)
            self.sim.record_start(self.name, name, uid)
        if uid in self.runs and vm.status.phase != RUNNING and self.reported.get(uid) != RUNNING:
            await self.report(vm, uid, RUNNING, "Running", "")

    async def lock(self, vm: vm_pb2.VirtualMachine) -> bool:
        if self.lease and vm.status.instance_lock_lease == self.lease:
            return True  # made with the assignment, bound to this node's lease (as corral-handler)
        vm_name, uid = vm.metadata.name, vm.status.instance_uid
        answer = await self.call("AcquireInstanceLock", handler_pb2.AcquireInstanceLockRequest(
            node_name=self.name, vm_name=vm_name, instance_uid=uid, lease_id=self.lease))
        return answer is not None and answer.acquired

    async def unlock(self, vm_name: str, uid: str) -> None:
        await self.call("ReleaseInstanceLock", handler_pb2.ReleaseInstanceLockRequest(
            node_name=self.name, vm_name=vm_name, instance_uid=uid))  # else it goes with the lease

    async def report(self, vm: vm_pb2.VirtualMachine, uid: str, phase: int, reason: str, message: str) -> None:
        if await self.call("ReportVirtualMachineStatus", handler_pb2.ReportVirtualMachineStatusRequest(
                node_name=self.name, name=vm.metadata.name, uid=vm.metadata.uid, phase=phase, reason=reason,
                message=message, instance_uid=uid)) is not None:
            self.reported[uid] = phase

    async def call(self, method: str, request):
        """The controller's answer, None when it refused or none answered."""
        for _ in range(len(self.sim.servers) * 2):
            try:
                return await getattr(self.sim.stub_for(self.name, self.server), method)(request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    log.info("node %s: %s: %s", self.name, method, exc.details())
                    return None
                self.server += 1
                await asyncio.sleep(0.2)
        return None


class SimCluster:
    """The process's simulated nodes and what they share."""

    def __init__(self, *, servers: list[str], count: int, prefix: str, vcpus: int,
                 memory_mib: int, cpu_allocation_ratio: int, ttl: int, labels: dict[str, str],
                 first_index: int = 0, record: TextIO | None = None) -> None:
        self.servers, self.ttl, self.labels = servers, ttl, labels
        self.vcpus, self.memory_mib, self.cpu_allocation_ratio = vcpus, memory_mib, cpu_allocation_ratio
        self.hypervisor = Hypervisor()
        self.nodes = [SimNode(name=f"{prefix}{index:05d}", sim=self)
                      for index in range(first_index, first_index + count)]
        self.channels: dict[tuple[str, int], grpc.aio.Channel] = {}
        self.record = record

    def record_start(self, node: str, vm_name: str, uid: str) -> None:
        """One line per run started, flushed at once: the process may be SIGKILLed next."""
        if self.record is not None:
            self.record.write(f"{node} {vm_name} {uid}\n")
            self.record.flush()

    def stub_for(self, node: str, attempt: int) -> handler_pb2_grpc.HandlerServiceStub:
        """Nodes spread over the controllers and over a few channels to each."""
        index = int(node[-5:]) if node[-5:].isdigit() else 0
        server = self.servers[(index + attempt) % len(self.servers)]
        key = (server, index // NODES_PER_CHANNEL)
        if key not in self.channels:
            self.channels[key] = grpc.aio.insecure_channel(server, options=[
                ("grpc.keepalive_time_ms", 5000), ("grpc.keepalive_timeout_ms", 3000)])
        return handler_pb2_grpc.HandlerServiceStub(self.channels[key])

    async def run(self) -> None:
        await asyncio.gather(*(node.register() for node in self.nodes))
        log.info("%d simulated nodes registered", len(self.nodes))
        tasks = [asyncio.create_task(coro) for node in self.nodes for coro in (node.heartbeat(), node.follow())]
        await asyncio.gather(*tasks)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="corral-simnodes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, required=True, help="how many nodes")
    parser.add_argument("--name-prefix", default="sim-", help="node names: PREFIX00000, PREFIX00001, ...")
    parser.add_argument("--first-index", type=int, default=0,
                        help="number of the first node (another process may host the ones before)")
    parser.add_argument("--record", default="", help="append 'NODE VM INSTANCE_UID' to this file per run started")
    parser.add_argument("--servers", default="127.0.0.1:7100", help="controller HOST:PORT list")
    parser.add_argument("--vcpus", type=int, default=32, help="host CPUs of each node")
    parser.add_argument("--memory-mib", type=int, default=262144, help="memory of each node")
    parser.add_argument("--cpu-allocation-ratio", type=int, default=10)
    parser.add_argument("--heartbeat-seconds", type=int, default=30, help="node lease TTL")
    parser.add_argument("--labels", default="", help="KEY=VALUE,... on every node")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.setup(args.log_level, name="simnodes")
    labels = dict(item.split("=", 1) for item in args.labels.split(",") if "=" in item)
    if args.first_index < 0 or args.first_index + args.count > 100000:
        raise SystemExit("corral-simnodes: node numbers go from 0 to 99999 (five digits)")
    record = open(args.record, "a", encoding="utf-8") if args.record else None
    sim = SimCluster(servers=args.servers.split(","), count=args.count, prefix=args.name_prefix,
                     vcpus=args.vcpus, memory_mib=args.memory_mib, cpu_allocation_ratio=args.cpu_allocation_ratio,
                     ttl=args.heartbeat_seconds, labels=labels, first_index=args.first_index, record=record)
    loop = asyncio.new_event_loop()
    main_task = loop.create_task(sim.run())
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, main_task.cancel)
    try:
        loop.run_until_complete(main_task)
    except asyncio.CancelledError:
        log.info("stopping %d simulated nodes (their leases run out)", len(sim.nodes))
    finally:
        if record is not None:
            record.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
