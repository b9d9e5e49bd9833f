"""Unit tests of networks' pure parts: MACs, tap names, validation, the node-port fit,
domain XML and the guest agent's answers turned into GuestInfo."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral import manifest, networks, scheduling
from corral.v1 import node_pb2, vm_pb2
from corral.validation import ValidationError, validate_new_vm
from launcher import domain_xml
from launcher.guest_agent import guest_info_from

UID = "3b7e4507-edf0-43f9-b31f-5f1c74a453dd"
RUN = "9c0ffee0-1234-4321-8888-0123456789ab"


def make_vm(name="web-1") -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = name
    vm.metadata.uid = UID
    vm.status.instance_uid = RUN
    vm.spec.vcpus = 1
    vm.spec.memory_mib = 128
    vm.spec.boot.kernel.kernel_path = "/boot/vmlinuz"
    return vm


def user_net(vm, name="default", forwards=((22, 2222),), protocol=0, mac=""):
    network = vm.spec.networks.add(name=name, mac_address=mac)
    network.user.SetInParent()
    for guest_port, node_port in forwards:
        network.user.port_forwards.add(guest_port=guest_port, node_port=node_port, protocol=protocol)
    return network


def bridge_net(vm, name="lan", bridge="br0", mac=""):
    network = vm.spec.networks.add(name=name, mac_address=mac)
    network.bridge.bridge = bridge
    return network


# -- MACs and names ---------------------------------------------------------------------------
def test_derived_mac_is_stable_locally_administered_unicast():
    mac = networks.derived_mac(UID, "default")
    assert mac == networks.derived_mac(UID, "default")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01
    assert networks.mac_ok(mac)
    assert mac != networks.derived_mac(UID, "lan")
    assert mac != networks.derived_mac("0" + UID[1:], "default")


def test_mac_for_prefers_the_spec_and_ignores_the_run():
    vm = make_vm()
    given = bridge_net(vm, mac="02:AA:bb:cc:dd:ee")
    derived = user_net(vm)
    assert networks.mac_for(vm, given) == "02:aa:bb:cc:dd:ee"
    before = networks.mac_for(vm, derived)
    vm.status.instance_uid = "11111111-2222-3333-4444-555555555555"  # another run, same VM
    assert networks.mac_for(vm, derived) == before == networks.derived_mac(UID, "default")


@pytest.mark.parametrize("mac,ok", [
    ("02:00:00:00:00:01", True), ("52:54:00:12:34:56", True), ("02:AA:BB:CC:DD:EE", True),
    ("01:00:5e:00:00:01", False),  # multicast
    ("ff:ff:ff:ff:ff:ff", False), ("00:00:00:00:00:00", False), ("02:00:00:00:00", False),
    ("02-00-00-00-00-01", False), ("02:00:00:00:00:01\n", False), ("02:00:00:00:00:0g", False), ("", False),
])
def test_mac_ok(mac, ok):
    assert networks.mac_ok(mac) is ok


@pytest.mark.parametrize("name,ok", [
    ("br0", True), ("virbr-0.1_x", True), ("a" * 15, True), ("a" * 16, False), ("", False),
    (".", False), ("..", False), ("br 0", False), ("br/0", False), ("br:0", False), ("br0\n", False),
])
def test_ifname_ok(name, ok):
    assert networks.ifname_ok(name) is ok


def test_tap_names_come_from_the_run_and_fit_ifnamsiz():
    tap = networks.tap_name(RUN, 3)
    assert tap == "ct9c0ffee012303" and len(tap) <= 15 and networks.ifname_ok(tap)
    vm = make_vm()
    user_net(vm)
    bridge_net(vm, bridge="br0")
    assert networks.bridge_taps(vm) == [(networks.tap_name(RUN, 1), "br0", networks.derived_mac(UID, "lan"))]


def test_hostfwd_netdev_from_integers_only():
    vm = make_vm()
    network = user_net(vm, forwards=((22, 2222), (53, 5353)))
    network.user.port_forwards[1].protocol = vm_pb2.PORT_PROTOCOL_UDP
    assert networks.hostfwd_netdev("n0", network) == "user,id=n0,hostfwd=tcp::2222-:22,hostfwd=udp::5353-:53"


# -- validation -------------------------------------------------------------------------------
def problems(vm) -> str:
    with pytest.raises(ValidationError) as caught:
        validate_new_vm(vm)
    return str(caught.value)


def test_good_networks_pass():
    vm = make_vm()
    user_net(vm, forwards=((22, 2222), (80, 8080)))
    bridge_net(vm, mac="02:00:00:00:00:01")
    bridge_net(vm, name="lan2", bridge="virbr0")
    validate_new_vm(vm)


@pytest.mark.parametrize("forwards,field", [
    (((0, 2222),), "guest_port must be between 1 and 65535, not 0"),
    (((22, 65536),), "node_port must be between 1 and 65535, not 65536"),
    (((22, -1),), "node_port must be between 1 and 65535, not -1"),
    (((22, 2222), (23, 2222)), "node_port 2222/tcp is forwarded twice"),
])
def test_bad_ports_are_refused(forwards, field):
    vm = make_vm()
    user_net(vm, forwards=forwards)
    assert field in problems(vm)


def test_same_node_port_with_two_protocols_is_fine():
    vm = make_vm()
    network = user_net(vm, forwards=((53, 5353), (53, 5353)))
    network.user.port_forwards[1].protocol = vm_pb2.PORT_PROTOCOL_UDP
    validate_new_vm(vm)
    network.user.port_forwards[1].protocol = 7
    assert "protocol 7 is not TCP or UDP" in problems(vm)


def test_bad_networks_are_named():
    vm = make_vm()
    user_net(vm, name="Default")
    user_net(vm, name="other")
    bridge_net(vm, name="lan", bridge="a-bridge-name-too-long", mac="01:00:00:00:00:01")
    bridge_net(vm, name="lan", bridge="br 0", mac="zz")
    vm.spec.networks.add(name="nothing")
    message = problems(vm)
    assert "spec.networks[0].name 'Default' is not a DNS-1123 label" in message
    assert "spec.networks[2].bridge.bridge 'a-bridge-name-too-long' is not a Linux interface name" in message
    assert "spec.networks[2].mac_address '01:00:00:00:00:01' is not a unicast MAC address" in message
    assert "spec.networks[3].name 'lan' is used by another network" in message
    assert "spec.networks[3].bridge.bridge 'br 0'" in message
    assert "spec.networks[3].mac_address 'zz'" in message
    assert "spec.networks[4] needs a binding" in message
    assert "2 user networks; at most one" in message


def test_duplicate_macs_and_too_many_networks():
    vm = make_vm()
    bridge_net(vm, name="a", mac="02:00:00:00:00:01")
    bridge_net(vm, name="b", mac="02:00:00:00:00:01")
    assert "spec.networks[1].mac_address '02:00:00:00:00:01' is used by another network" in problems(vm)
    vm = make_vm()
    for index in range(networks.MAX_NETWORKS + 1):
        bridge_net(vm, name=f"n{index}")
    assert f"at most {networks.MAX_NETWORKS} are allowed" in problems(vm)


# -- scheduling -------------------------------------------------------------------------------
def node(name) -> node_pb2.Node:
    made = node_pb2.Node()
    made.metadata.name = name
    made.status.capacity.vcpus = 8
    made.status.capacity.memory_mib = 8192
    return made


def placed(vm, on):
    vm.status.node_name = on
    vm.status.phase = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
    return vm


def test_a_taken_node_port_sends_the_vm_elsewhere_or_explains():
    first = make_vm("a")
    user_net(first, forwards=((22, 2222),))
    second = make_vm("b")
    user_net(second, forwards=((22, 2222),))
    views = scheduling.build_views([node("n1"), node("n2")], {"n1", "n2"}, [placed(first, "n1")])
    assert scheduling.choose_node(second.spec, views) == ("n2", "")
    views = scheduling.build_views([node("n1")], {"n1"}, [placed(first, "n1")])
    assert scheduling.choose_node(second.spec, views) == (
        None, "0/1 nodes are available: 1 node(s) didn't have free ports for the requested node ports.")
    # Another port, or the same number over UDP, fits; and views count VMs placed in this pass.
    other = make_vm("c")
    user_net(other, forwards=((22, 2223),), protocol=vm_pb2.PORT_PROTOCOL_TCP)
    udp = make_vm("d")
    user_net(udp, forwards=((22, 2222),), protocol=vm_pb2.PORT_PROTOCOL_UDP)
    assert scheduling.choose_node(other.spec, views) == ("n1", "")
    assert scheduling.choose_node(udp.spec, views) == ("n1", "")
    views["n1"].add(other.spec)
    assert scheduling.choose_node(other.spec, views)[0] is None


# -- domain XML -------------------------------------------------------------------------------
OPTIONS = domain_xml.DomainOptions(emulation=True, serial_log_path="/d/serial.log", agent_socket_path="/d/agent.sock")


def test_domain_xml_has_the_agent_channel_bridge_taps_and_user_netdev():
    vm = make_vm()
    user_net(vm, forwards=((22, 2222),))
    bridge_net(vm, bridge="br0", mac="02:aa:bb:cc:dd:ee")
    root = ET.fromstring(domain_xml.build_domain_xml(vm, OPTIONS))
    channel = root.find("devices/channel")
    assert channel.get("type") == "unix"
    assert channel.find("source").attrib == {"mode": "bind", "path": "/d/agent.sock"}
    assert channel.find("target").attrib == {"type": "virtio", "name": "org.qemu.guest_agent.0"}
    (interface,) = root.findall("devices/interface")
    assert interface.get("type") == "ethernet"
    assert interface.find("target").attrib == {"dev": networks.tap_name(RUN, 1), "managed": "no"}
    assert interface.find("mac").get("address") == "02:aa:bb:cc:dd:ee"
    assert interface.find("model").get("type") == "virtio"
    args = [arg.get("value") for arg in root.findall(f"{{{domain_xml.QEMU_NS}}}commandline/{{{domain_xml.QEMU_NS}}}arg")]
    mac = networks.derived_mac(UID, "default")
    assert args == ["-netdev", "user,id=corral-user,hostfwd=tcp::2222-:22", "-device",
                    f"virtio-net-pci,netdev=corral-user,mac={mac},bus=pci.0,addr=0x1f"]


def test_domain_xml_without_networks_has_no_qemu_commandline_and_libvirt_picks_the_socket():
    root = ET.fromstring(domain_xml.build_domain_xml(make_vm(), domain_xml.DomainOptions(True, "/d/serial.log")))
    assert root.find(f"{{{domain_xml.QEMU_NS}}}commandline") is None
    assert root.find("devices/channel/source") is None
    assert root.find("devices/channel/target").get("name") == "org.qemu.guest_agent.0"


@pytest.mark.parametrize("change", [
    lambda vm: setattr(vm.spec.networks[0], "mac_address", "02:00:00:00:00:01,x=y"),
    lambda vm: vm.spec.networks[0].user.port_forwards.add(guest_port=1, node_port=0),
    lambda vm: user_net(vm, name="second"),
    lambda vm: bridge_net(vm, bridge="br0,evil"),
])
def test_domain_xml_refuses_what_could_reach_qemus_command_line(change):
    vm = make_vm()
    user_net(vm)
    change(vm)
    with pytest.raises(ValueError):
        domain_xml.build_domain_xml(vm, OPTIONS)


# -- guest agent ------------------------------------------------------------------------------
def test_guest_info_from_libvirt_answers():
    addresses = {
        "lo": {"hwaddr": "00:00:00:00:00:00", "addrs": [{"type": 0, "addr": "127.0.0.1", "prefix": 8}]},
        "eth0": {"hwaddr": "02:aa:bb:cc:dd:ee", "addrs": [{"type": 0, "addr": "10.0.2.15", "prefix": 24},
                                                          {"type": 1, "addr": "fe80::1", "prefix": 64}]},
        "eth1": {"hwaddr": "02:00:00:00:00:01", "addrs": None},
    }
    info = {"hostname": "g1", "os.name": "Corral test guest", "os.version": "1", "os.kernel-release": "6.1.0"}
    guest = guest_info_from(addresses, info)
    assert guest.agent_connected and guest.hostname == "g1" and guest.os_name == "Corral test guest"
    assert guest.os_version == "1" and guest.kernel_release == "6.1.0"
    assert [(i.name, i.mac_address, list(i.ip_addresses)) for i in guest.interfaces] == [
        ("eth0", "02:aa:bb:cc:dd:ee", ["10.0.2.15/24", "fe80::1/64"]), ("eth1", "02:00:00:00:00:01", [])]
    assert guest_info_from({}, None) == vm_pb2.GuestInfo(agent_connected=True)


def test_the_network_example_parses_and_validates():
    text = (Path(__file__).resolve().parent.parent / "examples" / "vm-network.yaml").read_text()
    (vm,) = manifest.parse_vms(text, "vm-network.yaml")
    validate_new_vm(vm)
    assert [n.WhichOneof("binding") for n in vm.spec.networks] == ["user", "bridge"]
    assert networks.node_ports(vm.spec) == {("tcp", 2222), ("tcp", 8080)}


# -- hostile networks -------------------------------------------------------------------------
_text = st.one_of(st.text(max_size=20), st.sampled_from(["br0", "br0,x", "a" * 15, "02:00:00:00:00:01",
                                                         "02:00:00:00:00:01,hostfwd=tcp::1-:2", "'\"<>&"]))
_port = st.one_of(st.integers(-2, 70000), st.integers(-(2**31), 2**31 - 1))


@st.composite
def _networked_vm(draw):
    vm = make_vm()
    for _ in range(draw(st.integers(0, 4))):
        network = vm.spec.networks.add(name=draw(st.one_of(st.from_regex(r"\A[a-z]{1,5}\Z"), _text)))
        if draw(st.booleans()):
            network.mac_address = draw(st.one_of(_text, st.from_regex(r"\A[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")))
        kind = draw(st.sampled_from(["user", "bridge", "none"]))
        if kind == "user":
            network.user.SetInParent()
            for _ in range(draw(st.integers(0, 3))):
                network.user.port_forwards.add(protocol=draw(st.integers(-1, 3)), guest_port=draw(_port),
                                               node_port=draw(_port))
        elif kind == "bridge":
            network.bridge.bridge = draw(_text)
    return vm


@settings(max_examples=300, deadline=None, database=None)
@given(vm=_networked_vm())
def test_only_validated_integers_and_macs_reach_qemus_command_line(vm):
    try:
        validate_new_vm(vm)
    except ValidationError:
        return
    root = ET.fromstring(domain_xml.build_domain_xml(vm, OPTIONS))
    for arg in root.iter(f"{{{domain_xml.QEMU_NS}}}arg"):
        assert re.fullmatch(r"-netdev|-device|user,id=corral-user(,hostfwd=(tcp|udp)::\d{1,5}-:\d{1,5})*"
                            r"|virtio-net-pci,netdev=corral-user,mac=([0-9a-f]{2}:){5}[0-9a-f]{2},bus=pci\.0,addr=0x1f",
                            arg.get("value")), arg.get("value")
    for target in root.iter("target"):
        if target.get("managed") == "no":
            assert re.fullmatch(r"ct[0-9a-f]{13}", target.get("dev"))
