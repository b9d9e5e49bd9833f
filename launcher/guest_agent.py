"""What the guest agent (qemu-ga on the virtio-serial channel org.qemu.guest_agent.0) says
about the guest: polled in a background thread, never on the status board's path.

Every few seconds, while the domain is active, the poller asks libvirt for the guest's
interfaces (``interfaceAddresses`` with the agent as source) and its host name and OS
(``guestInfo``), each call bounded by a short agent timeout. An answer gives a
``GuestInfo`` with ``agent_connected``; no answer (no agent, not started yet, guest paused)
gives None, so DomainStatus.guest stays unset. A change calls ``on_change`` (the
supervisor then republishes its status).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import libvirt

from corral.v1 import vm_pb2

log = logging.getLogger(__name__)

#: Seconds between polls, and how long libvirt waits for one agent answer.
POLL_SECONDS = 3.0
AGENT_TIMEOUT_SECONDS = 2

_GUEST_INFO_TYPES = getattr(libvirt, "VIR_DOMAIN_GUEST_INFO_OS", 0) | getattr(
    libvirt, "VIR_DOMAIN_GUEST_INFO_HOSTNAME", 0)


def guest_info_from(addresses: dict, info: dict | None) -> vm_pb2.GuestInfo:
    """GuestInfo from libvirt's answers: interfaceAddresses' {name: {'hwaddr', 'addrs':
    [{'addr', 'prefix', 'type'}]}} and guestInfo's flat {'hostname', 'os.name', ...}.
    The loopback interface is left out. Pure, for tests."""
    guest = vm_pb2.GuestInfo(agent_connected=True)
    info = info or {}
    guest.hostname = str(info.get("hostname", ""))
    guest.os_name = str(info.get("os.name", info.get("os.id", "")))
    guest.os_version = str(info.get("os.version", info.get("os.version-id", "")))
    guest.kernel_release = str(info.get("os.kernel-release", ""))
    for name in sorted(addresses):
        details = addresses[name] or {}
        if name == "lo":
            continue
        interface = guest.interfaces.add(name=name, mac_address=str(details.get("hwaddr") or ""))
        for address in details.get("addrs") or []:
            interface.ip_addresses.append(f"{address.get('addr')}/{address.get('prefix')}")
    return guest


class GuestAgentPoller:
    """Keeps the latest GuestInfo of one domain (None while no agent answers)."""

    def __init__(self, domain: Callable[[], "libvirt.virDomain | None"], on_change: Callable[[], None],
                 interval: float = POLL_SECONDS, timeout: int = AGENT_TIMEOUT_SECONDS) -> None:
        self._domain = domain
        self._on_change = on_change
        self._interval = interval
        self._timeout = timeout
        self._lock = threading.Lock()
        self._info: vm_pb2.GuestInfo | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> vm_pb2.GuestInfo | None:
        with self._lock:
            return self._info

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="guest-agent", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                info = self.poll()
            except Exception:  # never let the poller die: the status must go on
                log.exception("guest agent poll failed")
                info = None
            with self._lock:
                changed = info != self._info
                self._info = info
            if changed:
                log.info("guest agent %s", "answers" if info is not None else "does not answer")
                self._on_change()

    def poll(self) -> vm_pb2.GuestInfo | None:
        """One round of questions; None when the domain is not running or no agent answers."""
        domain = self._domain()
        if domain is None:
            return None
        try:
            if domain.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
                return None
            domain.agentSetResponseTimeout(self._timeout, 0)
            addresses = domain.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0)
        except libvirt.libvirtError as exc:
            log.debug("guest agent: %s", exc.get_error_message())
            return None
        try:
            info = domain.guestInfo(_GUEST_INFO_TYPES, 0)
        except libvirt.libvirtError as exc:  # the agent answered above: keep what we have
            log.debug("guest agent: guestInfo: %s", exc.get_error_message())
            info = None
        return guest_info_from(addresses, info)
