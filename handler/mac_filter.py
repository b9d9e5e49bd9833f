"""No MAC spoofing on bridge networks: a bridge-family nftables table of the node that drops
every frame a Corral tap (ct...) sends with a source MAC other than the one its run was given.

One table, `bridge corral`, with a set of (tap name . MAC) pairs and two chains (frames
forwarded by any bridge, frames to the node itself): a frame from an interface named ct* whose
(interface . source MAC) is not in the set is dropped. A run's pair is added before its tap
joins the bridge and removed with the tap; the table is (re)declared in one nft transaction, so
handlers sharing a machine (tests) and restarts leave one copy of each rule.
"""
from __future__ import annotations

import json
import subprocess

from corral import networks

TABLE = "corral"
SET = "sources"
NFT_TIMEOUT = 30

#: Declared as a whole each time (idempotent: the chains are flushed and filled again, the
#: set and its elements kept).
_RULESET = f"""\
add table bridge {TABLE}
add set bridge {TABLE} {SET} {{ type ifname . ether_addr; }}
add chain bridge {TABLE} forward {{ type filter hook forward priority -200; policy accept; }}
add chain bridge {TABLE} input {{ type filter hook input priority -200; policy accept; }}
flush chain bridge {TABLE} forward
flush chain bridge {TABLE} input
add rule bridge {TABLE} forward iifname "{networks.TAP_PREFIX}*" iifname . ether saddr != @{SET} drop
add rule bridge {TABLE} input iifname "{networks.TAP_PREFIX}*" iifname . ether saddr != @{SET} drop
"""


class MacFilterError(OSError):
    """nftables refused or is missing: bridge networks cannot be filtered on this node."""


def _nft(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["nft", *args], input=script, capture_output=True, text=True, timeout=NFT_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        raise MacFilterError(f"cannot run nft (package nftables): {exc}") from None


def _element(tap: str, mac: str) -> str:
    """The set element; both parts are checked (a derived tap name, a well-formed MAC), as
    they go into an nft command (argument list, never a shell)."""
    if not networks.ifname_ok(tap) or not networks.mac_ok(mac):
        raise MacFilterError(f"not a tap and MAC: {tap!r} {mac!r}")
    return f'{{ "{tap}" . {mac} }}'


def ensure_table() -> None:
    result = _nft("-f", "-", script=_RULESET)
    if result.returncode != 0:
        raise MacFilterError(f"cannot set up the MAC filter (nft): {result.stderr.strip()}")


def allow(tap: str, mac: str) -> None:
    """Let `tap` send with `mac` only (the table is declared first)."""
    element = _element(tap, mac)
    ensure_table()
    result = _nft("add", "element", "bridge", TABLE, SET, element)
    if result.returncode != 0:
        raise MacFilterError(f"cannot allow {mac} on {tap} (nft): {result.stderr.strip()}")


def forget(tap: str, mac: str) -> None:
    """Remove the tap's pair (missing is fine: idempotent)."""
    try:
        _nft("delete", "element", "bridge", TABLE, SET, _element(tap, mac))
    except MacFilterError:
        pass


def allowed_pairs() -> set[tuple[str, str]]:
    """The (tap, MAC) pairs in the set now (for tests and diagnostics)."""
    result = _nft("-j", "list", "set", "bridge", TABLE, SET)
    if result.returncode != 0:
        return set()
    pairs = set()
    for item in json.loads(result.stdout).get("nftables", []):
        for element in item.get("set", {}).get("elem", []) or []:
            concat = element.get("concat") if isinstance(element, dict) else None
            if concat and len(concat) == 2:
                pairs.add((str(concat[0]), str(concat[1]).lower()))
    return pairs
