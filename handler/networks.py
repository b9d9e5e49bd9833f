"""The handler's half of bridge networks: a tap device per bridge network of a run, made by
root before the launcher starts and owned by the run's user, so the unprivileged QEMU can
open it (KubeVirt's split: the privileged part prepares, the unprivileged part uses).

Corral never creates bridges: the one a VM names must exist on the node. Tap names come
from the run's instance uid (corral/networks.py), so removing them needs nothing but the
VM record and can run any number of times (after a handler restart too).
"""
from __future__ import annotations

import logging
import os
import subprocess

from corral import networks
from corral.v1 import vm_pb2

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


def prepare_taps(vm: vm_pb2.VirtualMachine, owner_uid: int) -> list[str]:
    """Create the run's taps (owned by ``owner_uid``), each enslaved to its bridge and up;
    returns their names. On any failure the ones made are removed and NetworkSetupError
    says why. A leftover tap of the same name (a handler that died mid-start) is replaced."""
    made: list[str] = []
    try:
        for tap, bridge, _mac in networks.bridge_taps(vm):
            problem = bridge_problem(bridge)
            if problem:
                raise NetworkSetupError(problem)
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
        if isinstance(exc, NetworkSetupError):
            raise
        raise NetworkSetupError(f"cannot create tap devices: {exc}") from exc
    return made


def remove_taps(vm: vm_pb2.VirtualMachine) -> None:
    """Delete the run's taps; missing ones are fine (idempotent)."""
    for tap, _bridge, _mac in networks.bridge_taps(vm):
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
