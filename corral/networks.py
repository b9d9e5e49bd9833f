"""Names and numbers of a VM's networks, as pure functions shared by the API (validation),
the scheduler (node ports), the handler (tap devices) and the launcher (domain XML).

- MAC addresses: the one in the spec, else one derived from the VM's uid (constant across
  runs) and the network's name: locally administered unicast, so it never clashes with a
  vendor's address and stays the same for every run of the VM.
- Tap devices (bridge networks): named from the run's instance uid and the network's index,
  so the handler can derive the name again after a restart and clean up idempotently.
- Node ports (user networks): (protocol, port) pairs a VM takes on its node.
"""
from __future__ import annotations

import hashlib
import re

from corral.v1 import vm_pb2

#: Linux interface names (IFNAMSIZ 16 with the NUL), restricted to a safe alphabet.
IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}\Z")
MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}\Z")
#: Networks per VM. With at most 16 disks, a cloud-init seed and the agent's virtio-serial,
#: libvirt's PCI slots (assigned from 2 up) stay below 0x1e: the user network's NIC is at 0x1f.
MAX_NETWORKS = 8
MAX_PORT_FORWARDS = 64
TAP_PREFIX = "ct"

PROTOCOL_NAMES = {
    vm_pb2.PORT_PROTOCOL_UNSPECIFIED: "tcp",
    vm_pb2.PORT_PROTOCOL_TCP: "tcp",
    vm_pb2.PORT_PROTOCOL_UDP: "udp",
}


def ifname_ok(name: str) -> bool:
    """A Linux interface name Corral accepts: at most 15 of [A-Za-z0-9_.-], not '.' or '..'."""
    return bool(IFNAME.match(name)) and name not in (".", "..")


def mac_ok(mac: str) -> bool:
    """Six colon-separated hex octets, unicast (multicast bit clear), not all zero."""
    if not MAC.match(mac):
        return False
    octets = [int(part, 16) for part in mac.split(":")]
    return not octets[0] & 0x01 and any(octets)


def derived_mac(vm_uid: str, network_name: str) -> str:
    """02:xx:xx:xx:xx:xx from a hash of the VM's uid and the network's name: locally
    administered (0x02 set), unicast (0x01 clear), stable for the VM's whole life."""
    digest = hashlib.sha256(f"{vm_uid}/{network_name}".encode()).digest()
    return ":".join(f"{octet:02x}" for octet in (0x02, *digest[:5]))


def mac_for(vm: vm_pb2.VirtualMachine, network: vm_pb2.Network) -> str:
    """The MAC address the guest sees on this network (lower case)."""
    return network.mac_address.lower() if network.mac_address else derived_mac(vm.metadata.uid, network.name)


def tap_name(instance_uid: str, index: int) -> str:
    """The tap device of network ``index`` of one run: 'ct' + 11 hex digits of the run's
    instance uid + the index in two hex digits (15 characters, Linux's limit)."""
    return f"{TAP_PREFIX}{instance_uid.replace('-', '')[:11].lower()}{index:02x}"


def run_uid(vm: vm_pb2.VirtualMachine) -> str:
    """The run's instance uid (older records: the VM's uid)."""
    return vm.status.instance_uid or vm.metadata.uid


def bridge_taps(vm: vm_pb2.VirtualMachine) -> list[tuple[str, str, str]]:
    """(tap, bridge, mac) of each bridge network of this run, in spec order."""
    return [(tap_name(run_uid(vm), index), network.bridge.bridge, mac_for(vm, network))
            for index, network in enumerate(vm.spec.networks) if network.WhichOneof("binding") == "bridge"]


def node_ports(spec: vm_pb2.VirtualMachineSpec) -> set[tuple[str, int]]:
    """(protocol, node_port) pairs the VM listens on at its node."""
    return {(PROTOCOL_NAMES.get(forward.protocol, "tcp"), forward.node_port)
            for network in spec.networks if network.WhichOneof("binding") == "user"
            for forward in network.user.port_forwards}


def hostfwd_netdev(netdev_id: str, network: vm_pb2.Network) -> str:
    """QEMU's -netdev value for a user network: slirp with one hostfwd per port forward,
    on every address of the node. Only validated integers and fixed words go in."""
    parts = ["user", f"id={netdev_id}"]
    for forward in network.user.port_forwards:
        protocol = PROTOCOL_NAMES[forward.protocol]
        parts.append(f"hostfwd={protocol}::{int(forward.node_port)}-:{int(forward.guest_port)}")
    return ",".join(parts)
