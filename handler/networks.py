"""The handler's half of bridge networks: a tap device per bridge network of a run, made by
root before the launcher starts and owned by the run's user, so the unprivileged QEMU can
open it (KubeVirt's split: the privileged part prepares, the unprivileged part uses).

Corral never creates bridges: the one a VM names must exist on the node. Tap names come
from the run's instance uid (corral/networks.py), so removing them needs nothing but the
VM record and can run any number of times (after a handler restart too).

A guest must not steer the node's network: only bridges on the node's allow-list
(`allowed_bridges`, names or shell patterns; empty = none) are joined; a MAC that is not
unicast, is the bridge's or one of its ports', or is another VM's on this node is refused; and
each tap may only send with its own MAC: a bridge-family nftables table (`corral`, one set of
(tap . MAC) pairs) drops every frame a tap sends from any other source address, forwarded or
to the node. libvirt's nwfilter (no-mac-spoofing) is not used: the embedded QEMU driver asks
the system's virtnwfilterd for it (tried: the domain does not start without that shared daemon).
"""
from __future__ import annotations

import fnmatch
import logging
import os
import subprocess
from collections.abc import Iterable

from corral import networks
from corral.v1 import vm_pb2
from handler import mac_filter

log = logging.getLogger(__name__)

SYS_NET = "/sys/class/net"


class NetworkSetupError(Exception):
    """A bridge network of the run cannot be attached on this node."""


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


def _exists(name: str) -> bool:
    return os.path.exists(os.path.join(SYS_NET, name))


def bridge_problem(bridge: str) -> str | None:
    """Why ``bridge`` cannot take a tap on this node, or None."""
    if not networks.ifname_ok(bridge):
        return f"{bridge!r} is not an interface name"
    if not _exists(bridge):
        return f"bridge {bridge!r} does not exist on this node (Corral never creates bridges)"
    if not os.path.isdir(os.path.join(SYS_NET, bridge, "bridge")):
        return f"{bridge!r} on this node is not a bridge"
    return None


def bridge_allowed(bridge: str, allowed: Iterable[str]) -> bool:
    """Whether the node's allow-list names the bridge (exactly or by a shell pattern)."""
    return any(fnmatch.fnmatchcase(bridge, pattern) for pattern in allowed)


def _addresses_on(bridge: str) -> set[str]:
    """The MACs of the bridge itself and of its ports (the node's uplink, other VMs' taps)."""
    found = set()
    ports = os.path.join(SYS_NET, bridge, "brif")
    for name in [bridge, *(os.listdir(ports) if os.path.isdir(ports) else [])]:
        try:
            with open(os.path.join(SYS_NET, name, "address"), encoding="ascii") as handle:
                found.add(handle.read().strip().lower())
        except OSError:
            continue
    return found


def macs_in_use(vms: Iterable[vm_pb2.VirtualMachine], vm: vm_pb2.VirtualMachine) -> dict[str, str]:
    """MAC -> VM name of the bridge networks of the other VMs' runs on this node (another run
    of the same VM, such as an incoming migration, is not another VM)."""
    used = {}
    for other in vms:
        if other.metadata.uid != vm.metadata.uid:
            for _tap, _bridge, mac in networks.bridge_taps(other):
                used[mac] = other.metadata.name
    return used


def network_problem(bridge: str, mac: str, *, allowed: Iterable[str], taken: dict[str, str]) -> str | None:
    """Why a bridge network may not be attached on this node, or None."""
    if not bridge_allowed(bridge, allowed):
        return f"bridge {bridge!r} is not allowed on this node (allowed_bridges: {', '.join(allowed) or 'none'})"
    problem = bridge_problem(bridge)
    if problem:
        return problem
    if not networks.mac_ok(mac):
        return f"MAC {mac} is not a unicast address"
    if mac in taken:
        return f"MAC {mac} is already used by VM {taken[mac]!r} on this node"
    if mac in _addresses_on(bridge):
        return f"MAC {mac} is the address of bridge {bridge!r} or of one of its ports"
    return None


def prepare_taps(vm: vm_pb2.VirtualMachine, owner_uid: int, *, allowed: Iterable[str] = (),
                 taken: dict[str, str] | None = None) -> list[str]:
    """Create the run's taps (owned by ``owner_uid``), each enslaved to an allowed bridge, up,
    and allowed to send only with its MAC; returns their names. On any failure the ones made
    are removed and NetworkSetupError says why. A leftover tap of the same name (a handler that
    died mid-start) is replaced."""
    made: list[str] = []
    allowed = tuple(allowed)
    try:
        for tap, bridge, mac in networks.bridge_taps(vm):
            problem = network_problem(bridge, mac, allowed=allowed, taken=taken or {})
            if problem:
                raise NetworkSetupError(problem)
            mac_filter.allow(tap, mac)  # before the tap joins the bridge: never a moment unfiltered
            if _exists(tap):
                _ip("link", "del", "dev", tap)
            for args in (("tuntap", "add", "dev", tap, "mode", "tap", "user", str(owner_uid)),
                         ("link", "set", "dev", tap, "master", bridge),
                         ("link", "set", "dev", tap, "up")):
                result = _ip(*args)
                if args[0] == "tuntap" and result.returncode == 0:
                    made.append(tap)
                if result.returncode != 0:
                    raise NetworkSetupError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
            log.info("vm %s: tap %s on bridge %s for uid %d", vm.metadata.name, tap, bridge, owner_uid)
    except (OSError, subprocess.SubprocessError, NetworkSetupError) as exc:
        for tap in made:
            _ip("link", "del", "dev", tap)
        for tap, _bridge, mac in networks.bridge_taps(vm):
            mac_filter.forget(tap, mac)
        if isinstance(exc, NetworkSetupError):
            raise
        raise NetworkSetupError(f"cannot create tap devices: {exc}") from exc
    return made


def remove_taps(vm: vm_pb2.VirtualMachine) -> None:
    """Delete the run's taps; missing ones are fine (idempotent)."""
    for tap, _bridge, mac in networks.bridge_taps(vm):
        mac_filter.forget(tap, mac)
        if not _exists(tap):
            continue
        try:
            result = _ip("link", "del", "dev", tap)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("vm %s: cannot remove tap %s: %s", vm.metadata.name, tap, exc)
            continue
        if result.returncode != 0 and _exists(tap):
            log.warning("vm %s: cannot remove tap %s: %s", vm.metadata.name, tap, result.stderr.strip())
        else:
            log.info("vm %s: tap %s removed", vm.metadata.name, tap)
