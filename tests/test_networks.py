"""Networks and the guest agent on real guests (TCG), through a real cluster: one controller
and two handlers for the whole module (node "iso" with per-VM isolation, node "plain"
without), to keep boots few.

The test guest (scripts/build-guest.sh) runs qemu-ga on its virtio-serial port, takes a DHCP
lease on each interface and answers "CORRAL-GUEST-HELLO ..." on TCP 8080."""
from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import grpc
import pytest

from corral import networks
from corral.v1 import launcher_pb2, launcher_pb2_grpc, vm_pb2
from handler import mac_filter
from handler.launchers import vm_dir_for
from tests.cluster import Cluster, free_port, wait_for

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
FAILED = vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED
GUEST_PORT = 8080

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="taps, bridges and isolation need root")


@pytest.fixture(scope="module")
def cluster(etcd, guest_dir, tmp_path_factory):
    made = Cluster(etcd=etcd, base=tmp_path_factory.mktemp("networks"), prefix=f"/t-{uuid.uuid4().hex[:8]}/",
                   guest_dir=guest_dir)
    try:
        made.start_controller()
        # Bridges are opt-in per node: the tests' bridges (cbr...) on "iso", none on "plain".
        made.start_handler("iso", labels="net=iso", extra=["--isolation", "on", "--allowed-bridges", "cbr*,cnosuchbr0"])
        made.start_handler("plain", labels="net=plain", extra=["--isolation", "off"])
        yield made
    finally:
        made.close()


@pytest.fixture
def bridge():
    name = f"cbr{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    yield name
    subprocess.run(["ip", "link", "del", name], check=False)


def launcher_status(cluster, node: str, vm: vm_pb2.VirtualMachine) -> launcher_pb2.DomainStatus:
    sock = vm_dir_for(cluster.state_dir(node), vm.status.instance_uid) / "launcher.sock"
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        stub = launcher_pb2_grpc.LauncherServiceStub(channel)
        return stub.GetDomainStatus(launcher_pb2.GetDomainStatusRequest(), timeout=5).status


def agent_interface(cluster, node, vm, mac: str, *, with_address: str = "", timeout: float = 90):
    """The guest's interface with this MAC, as the agent reports it through the launcher."""
    def found():
        guest = launcher_status(cluster, node, vm).guest
        for interface in guest.interfaces if guest.agent_connected else []:
            if interface.mac_address == mac and (not with_address or with_address in interface.ip_addresses):
                return guest, interface
        return None
    return wait_for(found, timeout=timeout, interval=0.5, what=f"the guest agent to report {mac} {with_address}")


def hello(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as conn:
        conn.settimeout(3)
        return conn.recv(200)


def exists(ifname: str) -> bool:
    return Path("/sys/class/net", ifname).exists()


def test_port_forward_agent_and_a_stable_mac_across_runs(cluster):
    port = free_port()
    vm = cluster.guest_vm("fwd", node_selector={"net": "plain"})
    vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_ALWAYS
    network = vm.spec.networks.add(name="default")
    network.user.port_forwards.add(guest_port=GUEST_PORT, node_port=port)
    created = cluster.create(vm)
    mac = networks.derived_mac(created.metadata.uid, "default")
    first = cluster.wait_phase("fwd", RUNNING)

    # The node port reaches the guest's port 8080.
    answer = wait_for(lambda: hello(port), timeout=90, interval=0.5, what=f"an answer on 127.0.0.1:{port}")
    assert answer.startswith(b"CORRAL-GUEST-HELLO")
    # The agent answers through the launcher: OS, kernel, the user network's lease.
    guest, interface = agent_interface(cluster, "plain", first, mac, with_address="10.0.2.15/24")
    assert guest.os_name == "Corral test guest" and guest.kernel_release.startswith("6.")
    assert interface.name == "eth0"
    # The handler passes it on to the VM's status.
    stored = wait_for(lambda: (g := cluster.get("fwd").status.guest).agent_connected and g, timeout=30,
                      what="the guest info in the VM's status")
    assert mac in [i.mac_address for i in stored.interfaces]

    # No second VM with that node port on the node: it stays Pending and says why.
    clash = cluster.guest_vm("clash", node_selector={"net": "plain"})
    clash.spec.networks.add(name="default").user.port_forwards.add(guest_port=22, node_port=port)
    cluster.create(clash)

    def unschedulable():
        found = [c for c in cluster.get("clash").status.conditions if c.reason == "Unschedulable"]
        return found and found[0].message
    message = wait_for(unschedulable, timeout=20, what="an Unschedulable condition")
    assert "1 node(s) didn't have free ports for the requested node ports" in message
    cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="clash"), timeout=10)

    # A new run (the guest stopped; run strategy Always) has the same MAC, and the port again.
    with grpc.insecure_channel(f"unix:{vm_dir_for(cluster.state_dir('plain'), first.status.instance_uid)}/launcher.sock") as ch:
        launcher_pb2_grpc.LauncherServiceStub(ch).KillDomain(launcher_pb2.KillDomainRequest(), timeout=30)
    second = wait_for(lambda: (v := cluster.get("fwd")).status.phase == RUNNING
                      and v.status.instance_uid != first.status.instance_uid and v,
                      timeout=60, what="a second run")
    agent_interface(cluster, "plain", second, mac, with_address="10.0.2.15/24")
    assert wait_for(lambda: hello(port), timeout=60, interval=0.5, what="the port again").startswith(b"CORRAL-GUEST-HELLO")
    cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="fwd"), timeout=10)


def test_bridge_tap_owned_by_the_run_user_and_removed_after(cluster, bridge):
    """On the isolated node: a tap for the run's user on the bridge, plus a user network (QEMU
    runs as the run's user and still binds the node port); the tap outlives a handler restart
    and goes with the run."""
    port = free_port()
    vm = cluster.guest_vm("bridged", node_selector={"net": "iso"})
    vm.spec.networks.add(name="lan", mac_address="02:aa:bb:cc:dd:01").bridge.bridge = bridge
    vm.spec.networks.add(name="default").user.port_forwards.add(guest_port=GUEST_PORT, node_port=port)
    cluster.create(vm)
    running = cluster.wait_phase("bridged", RUNNING)
    tap = networks.tap_name(running.status.instance_uid, 0)
    assert exists(tap)
    assert os.path.basename(os.readlink(f"/sys/class/net/{tap}/master")) == bridge
    owner = os.stat(vm_dir_for(cluster.state_dir("iso"), running.status.instance_uid)).st_uid
    assert owner != 0 and Path(f"/sys/class/net/{tap}/owner").read_text().strip() == str(owner)
    # The guest sees the MAC from the spec (no DHCP on this bridge: no address needed).
    _, interface = agent_interface(cluster, "iso", running, "02:aa:bb:cc:dd:01")
    assert interface.name == "eth0"
    assert wait_for(lambda: hello(port), timeout=60, interval=0.5, what="the port").startswith(b"CORRAL-GUEST-HELLO")

    # The tap may send with its MAC only (handler/mac_filter.py).
    assert (tap, "02:aa:bb:cc:dd:01") in mac_filter.allowed_pairs()

    # Another VM may not take its MAC on this node, nor the bridge's own.
    bridge_mac = Path(f"/sys/class/net/{bridge}/address").read_text().strip()
    for name, mac, expected in (("twin", "02:aa:bb:cc:dd:01", "already used by VM 'bridged'"),
                                ("gateway", bridge_mac, "is the address of bridge")):
        spoof = cluster.guest_vm(name, node_selector={"net": "iso"})
        spoof.spec.run_strategy = vm_pb2.RUN_STRATEGY_ONCE
        spoof.spec.networks.add(name="lan", mac_address=mac).bridge.bridge = bridge
        cluster.create(spoof)
        failed = cluster.wait_phase(name, FAILED, timeout=30)
        assert any(expected in c.message and c.reason == "NetworkUnavailable" for c in failed.status.conditions), \
            failed.status.conditions
        assert not exists(networks.tap_name(failed.status.instance_uid, 0))
        cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name=name), timeout=10)

    # A restarted handler adopts the run, and removes the tap (named again) when it ends.
    cluster.kill_handler("iso")
    cluster.start_handler("iso")
    assert exists(tap)
    cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="bridged"), timeout=10)
    wait_for(lambda: not exists(tap), timeout=60, what=f"tap {tap} to be removed")
    assert (tap, "02:aa:bb:cc:dd:01") not in mac_filter.allowed_pairs()


def test_a_bridge_not_on_the_nodes_allow_list_is_refused(cluster, bridge):
    """Node "plain" allows no bridge (the default): joining one, even one that exists, fails the
    run before any tap is made."""
    vm = cluster.guest_vm("mgmt", node_selector={"net": "plain"})
    vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_ONCE
    vm.spec.networks.add(name="lan").bridge.bridge = bridge
    cluster.create(vm)
    failed = cluster.wait_phase("mgmt", FAILED, timeout=30)
    assert any("is not allowed on this node" in c.message and c.reason == "NetworkUnavailable"
               for c in failed.status.conditions), failed.status.conditions
    assert not exists(networks.tap_name(failed.status.instance_uid, 0))
    assert not os.listdir(f"/sys/class/net/{bridge}/brif")
    cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="mgmt"), timeout=10)


def test_a_missing_bridge_fails_the_run_with_a_clear_message(cluster):
    vm = cluster.guest_vm("nobridge", node_selector={"net": "iso"})
    vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_ONCE
    vm.spec.networks.add(name="lan").bridge.bridge = "cnosuchbr0"
    cluster.create(vm)
    failed = cluster.wait_phase("nobridge", FAILED, timeout=30)
    ready = [c for c in failed.status.conditions if c.message and "cnosuchbr0" in c.message]
    assert ready and "does not exist on this node" in ready[0].message, failed.status.conditions
    assert not exists(networks.tap_name(failed.status.instance_uid, 0))
    cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="nobridge"), timeout=10)


@pytest.mark.parametrize("change,expected", [
    (lambda n: n.user.port_forwards.add(guest_port=22, node_port=70000), "node_port must be between 1 and 65535"),
    (lambda n: n.user.port_forwards.add(guest_port=0, node_port=2222), "guest_port must be between 1 and 65535"),
    (lambda n: [n.user.port_forwards.add(guest_port=p, node_port=2222) for p in (22, 23)], "is forwarded twice"),
    (lambda n: (n.user.SetInParent(), setattr(n, "mac_address", "01:00:5e:00:00:01")), "is not a unicast MAC"),
    (lambda n: (n.user.SetInParent(), setattr(n, "mac_address", "not-a-mac")), "is not a unicast MAC"),
    (lambda n: setattr(n.bridge, "bridge", "br0;reboot"), "is not a Linux interface name"),
    (lambda n: setattr(n.bridge, "bridge", "a-very-long-bridge"), "is not a Linux interface name"),
])
def test_bad_networks_are_invalid_argument(cluster, change, expected):
    vm = cluster.guest_vm("bad")
    change(vm.spec.networks.add(name="default"))
    with pytest.raises(grpc.RpcError) as caught:
        cluster.create(vm)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in caught.value.details()
