"""Which controller replica serves a node's assignment stream: not the leader while another
replica answers (its CPU is for the reconcilers, and its failure then cuts no node's stream),
the leader when none does. Real controllers and etcd; simulated nodes (corral-simnodes: the
real handler protocol, libvirt's test driver) and one real corral-handler."""
from __future__ import annotations

import json
import signal

from corral.v1 import node_pb2, vm_pb2
from handler.assignments import Tries
from tests.cluster import leader_name, simulated_nodes, simulated_vm, wait_for

NODES = 6
RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING


def messages(path) -> list[str]:
    found = []
    for line in path.read_text().splitlines():
        try:
            found.append(json.loads(line).get("message", ""))
        except ValueError:
            continue
    return found


def streams_served(cluster, replica: str) -> set[str]:
    """Nodes whose assignment stream the replica served (its log: "node N follows its ...")."""
    return {message.split()[1] for message in messages(cluster.base / f"controller-{replica}.log")
            if message.startswith("node ") and " follows its " in message}


def two_replicas_c1_leading(cluster) -> None:
    cluster.start_controller("c1")
    wait_for(lambda: leader_name(cluster) == "c1", timeout=20, what="c1 to lead")
    cluster.start_controller("c2")


def kill_controller(cluster, name: str) -> None:
    process, _ = cluster.controllers.pop(name)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_simulated_nodes_follow_a_standby_and_come_back_to_the_leader_when_it_is_alone(cluster):
    two_replicas_c1_leading(cluster)
    with simulated_nodes(cluster, NODES, cluster.base / "simnodes.log"):
        cluster.preferred = "c2"
        wait_for(lambda: len(streams_served(cluster, "c2")) == NODES, timeout=60,
                 what=f"the {NODES} simulated nodes' streams on the standby")
        assert streams_served(cluster, "c1") == set(), "the leader served a node stream while a standby answered"
        names = [f"vm-{index}" for index in range(4)]
        for name in names:
            cluster.create(simulated_vm(name, label=("streams", "t"), memory_mib=64))

        def running(expected: list[str]):
            vms = cluster.vms.ListVirtualMachines(vm_pb2.ListVirtualMachinesRequest(
                label_selector="streams=t"), timeout=10).virtual_machines
            return sorted(vm.metadata.name for vm in vms if vm.status.phase == RUNNING) == sorted(expected)
        wait_for(lambda: running(names), timeout=60, what="the VMs Running on simulated nodes")

        kill_controller(cluster, "c2")  # the leader is the only replica left: it serves them all
        cluster.preferred = "c1"
        wait_for(lambda: len(streams_served(cluster, "c1")) == NODES, timeout=60,
                 what="every node's stream back on the leader")
        cluster.create(simulated_vm("vm-after", label=("streams", "t"), memory_mib=64))
        wait_for(lambda: running([*names, "vm-after"]), timeout=60, what="a VM started through the leader's streams")
        nodes = cluster.nodes.ListNodes(node_pb2.ListNodesRequest(), timeout=10).nodes
        assert len(nodes) == NODES and all(n.status.phase == node_pb2.NODE_PHASE_READY for n in nodes)


def test_a_handler_follows_a_standby_and_the_leader_once_the_standby_is_gone(cluster):
    two_replicas_c1_leading(cluster)
    leader_address, standby_address = cluster.controllers["c1"][1], cluster.controllers["c2"][1]
    cluster.preferred = "c2"
    cluster.start_handler("n1")
    handler_log = cluster.base / "handler-n1.log"

    def following(address: str) -> bool:
        return any(m.startswith("following ") and m.endswith(f"from controller {address}")
                   for m in messages(handler_log))
    wait_for(lambda: following(standby_address), timeout=30, what="the handler to follow the standby")
    assert not following(leader_address)
    assert any("leads: following another replica" in m for m in messages(handler_log)), \
        "the handler asked the leader first (its first address) and was sent on"

    kill_controller(cluster, "c2")
    cluster.preferred = "c1"
    wait_for(lambda: following(leader_address), timeout=60, what="the handler to follow the leader")
    wait_for(lambda: cluster.node_ready("n1"), timeout=30, what="n1 Ready through the leader")


def streams_moved(cluster, replica: str) -> set[str]:
    """Nodes whose stream the replica sent elsewhere once it led (its log)."""
    return {message.split()[1].rstrip(":") for message in messages(cluster.base / f"controller-{replica}.log")
            if message.startswith("node ") and "its stream moves to another replica" in message}


def test_a_standby_that_becomes_leader_hands_its_node_streams_to_the_other_replicas(cluster):
    """The leader dies: the standby that takes over served some nodes' streams, and moves them
    (a few at a time) to the replica still standing by, where they resync; VMs still start."""
    two_replicas_c1_leading(cluster)
    cluster.start_controller("c3")
    with simulated_nodes(cluster, NODES, cluster.base / "simnodes.log"):
        wait_for(lambda: len(streams_served(cluster, "c2") | streams_served(cluster, "c3")) == NODES,
                 timeout=60, what="every node's stream on a standby")
        kill_controller(cluster, "c1")
        new_leader = wait_for(lambda: leader_name(cluster) if leader_name(cluster) in ("c2", "c3") else None,
                              timeout=30, what="a standby to lead")
        other = "c3" if new_leader == "c2" else "c2"
        cluster.preferred = other
        had = streams_served(cluster, new_leader)
        assert had, "the new leader served no node stream before (spread by name: this test needs some)"
        wait_for(lambda: streams_moved(cluster, new_leader) == had, timeout=30,
                 what=f"the new leader {new_leader} to move its {len(had)} streams")
        wait_for(lambda: streams_served(cluster, other) == {f"sim-{index:05d}" for index in range(NODES)},
                 timeout=30, what=f"every node's stream on {other}")
        cluster.create(simulated_vm("vm-moved", label=("streams", "m"), memory_mib=64))
        wait_for(lambda: cluster.get("vm-moved").status.phase == RUNNING, timeout=60,
                 what="a VM started on the moved streams")


def test_after_a_failure_a_stream_tries_every_other_address_before_any_twice():
    """Addresses [dead, leader, standby], a stream on the leader moved away (spread 2 steps lands
    on the dead one): the next is the standby, never the leader again, and only the last
    untried address is asked without avoid_leader."""
    tries = Tries(3)
    assert tries.avoid_leader(1)
    steps = tries.failed(1, 2)  # turned away by the leader at 1
    assert (1 + steps) % 3 == 0 and tries.avoid_leader(0)
    steps = tries.failed(0)  # the dead one
    assert (0 + steps) % 3 == 2, "went back to the leader before trying the standby"
    assert not tries.avoid_leader(2)  # the last one untried: served even if it leads
    tries.synced()
    assert tries.avoid_leader(2)
