"""Correctness at size, on SIMULATED nodes (corral-simnodes: the real handler protocol, VMs as
domains of libvirt's test driver, no QEMU): 200 VMs on 50 nodes behind 3 controller replicas,
the leader killed in the middle of the storm. Every VM reaches Running, none ever runs on two
nodes or twice, nothing is lost; then all are deleted. Figures come from bench/bench_scale.py."""
from __future__ import annotations

import json
import re
import signal
import time
from concurrent import futures

import pytest

from corral.v1 import node_pb2, vm_pb2
from tests.cluster import leader_name, simulated_nodes, simulated_vm, wait_for

NODES, VMS = 50, 200
RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
RUN_LINE = re.compile(r"run (started|ended): vm (\S+) run (\S+) node (\S+)")


def small_vm(name: str) -> vm_pb2.VirtualMachine:
    return simulated_vm(name, label=("scale", "ci"), memory_mib=64)


def check_runs(log_path) -> dict[str, int]:
    """From the simulated nodes' log: runs started per VM, and that no VM ever ran twice at once."""
    running: dict[str, set[str]] = {}
    started: dict[str, int] = {}
    for line in log_path.read_text().splitlines():
        try:
            message = json.loads(line).get("message", "")
        except ValueError:
            continue
        match = RUN_LINE.search(message)
        if not match:
            continue
        what, vm, run, node = match.groups()
        if what == "started":
            running.setdefault(vm, set()).add(f"{run}@{node}")
            started[vm] = started.get(vm, 0) + 1
            assert len(running[vm]) == 1, f"vm {vm} ran twice at once: {running[vm]}"
        else:
            running.get(vm, set()).discard(f"{run}@{node}")
    return started


@pytest.mark.slow
def test_200_vms_on_50_simulated_nodes_survive_a_leader_kill(cluster):
    for name in ("c1", "c2", "c3"):
        cluster.start_controller(name)
    log_path = cluster.base / "simnodes.log"
    with simulated_nodes(cluster, NODES, log_path):
        wait_for(lambda: len(cluster.nodes.ListNodes(node_pb2.ListNodesRequest(page_size=1000), timeout=10).nodes)
                 == NODES, timeout=60, what=f"{NODES} simulated nodes")
        first_leader = leader_name(cluster)
        names = [f"vm-{index:04d}" for index in range(VMS)]

        def create(name: str) -> None:
            for _ in range(50):
                try:
                    cluster.create(small_vm(name))
                    return
                except Exception as exc:  # noqa: BLE001 - a replica dying mid-call: try another
                    if "ALREADY_EXISTS" in str(exc):
                        return
                    cluster.preferred = next(n for n in cluster.controllers if n != first_leader)
                    time.sleep(0.2)
            raise AssertionError(f"could not create {name}")

        with futures.ThreadPoolExecutor(8) as pool:
            done = [pool.submit(create, name) for name in names[: VMS // 2]]
            for future in done:
                future.result()
            process, _ = cluster.controllers[first_leader]
            process.send_signal(signal.SIGKILL)  # the leader dies in the middle of the storm
            process.wait()
            cluster.preferred = next(n for n in cluster.controllers if n != first_leader)
            for future in [pool.submit(create, name) for name in names[VMS // 2:]]:
                future.result()
        del cluster.controllers[first_leader]

        def all_running() -> bool:
            vms = cluster.vms.ListVirtualMachines(vm_pb2.ListVirtualMachinesRequest(
                page_size=1000, label_selector="scale=ci"), timeout=30).virtual_machines
            return len(vms) == VMS and all(vm.status.phase == RUNNING for vm in vms) and vms
        vms = wait_for(all_running, timeout=120, interval=1.0, what=f"{VMS} VMs Running")
        assert leader_name(cluster) != first_leader
        assert len({vm.metadata.name for vm in vms}) == VMS
        assert all(vm.status.node_name.startswith("sim-") for vm in vms)
        started = check_runs(log_path)
        assert sorted(started) == sorted(names), "a VM Running without a run on a node"
        assert all(count == 1 for count in started.values()), \
            {vm: count for vm, count in started.items() if count != 1}

        for name in names:
            cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name=name), timeout=10)
        wait_for(lambda: not cluster.vms.ListVirtualMachines(vm_pb2.ListVirtualMachinesRequest(
            page_size=1000, label_selector="scale=ci"), timeout=30).virtual_machines,
                 timeout=120, interval=1.0, what="every VM deleted")
        check_runs(log_path)
