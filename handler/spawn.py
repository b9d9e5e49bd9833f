"""How the handler starts a launcher so that it outlives the handler.

Outside systemd a launcher runs in its own session (start_new_session): stopping or killing
the handler leaves it and its guest running. Under systemd that is not enough: every process
the handler forks stays in the handler unit's cgroup, and `systemctl stop/restart
corral-handler` kills the whole cgroup (KillMode=control-group, the default; KillMode=process
would keep launchers alive but also any stray helper, with nothing accounting for either).
So under systemd each launcher starts in its own transient scope unit,
corral-launcher-NAME-XXXXXX.scope in corral-launchers.slice, made by `systemd-run --scope`,
which moves itself into the new scope and then execs the launcher (same pid, so the
handler's Popen still follows it). QEMU, a child of the launcher, lives in the same scope.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from pathlib import Path

log = logging.getLogger("corral.handler.spawn")

#: Exists when systemd is the init system (sd_booted(3)).
SYSTEMD_RUN_DIR = Path("/run/systemd/system")
SLICE = "corral-launchers.slice"
_warned = False


def under_systemd() -> bool:
    """True when this process was started by systemd as a service ($INVOCATION_ID) on a
    machine booted with systemd."""
    return bool(os.environ.get("INVOCATION_ID")) and SYSTEMD_RUN_DIR.is_dir()


def unit_name(name: str) -> str:
    """A scope name for a launcher: unit names allow [A-Za-z0-9:_.-]; the random suffix lets
    a new launcher start while the previous scope still holds the guest's QEMU."""
    safe = re.sub(r"[^A-Za-z0-9:_.-]", "_", name)[:64] or "launcher"
    return f"corral-launcher-{safe}-{secrets.token_hex(3)}.scope"


def launcher_prefix(name: str, *, mode: str = "auto") -> list[str]:
    """argv to put before the launcher's command line: a transient scope under systemd
    (mode 'auto' when under_systemd(), or 'on'), nothing otherwise (mode 'off', or no
    systemd-run: then the caller's start_new_session is what keeps the launcher alive)."""
    global _warned
    if mode == "off" or (mode == "auto" and not under_systemd()):
        return []
    systemd_run = shutil.which("systemd-run")
    if systemd_run is None:
        if not _warned:
            log.warning("running under systemd but systemd-run is missing: launchers stay in the "
                        "handler's cgroup and die when its unit stops")
            _warned = True
        return []
    return [systemd_run, "--scope", "--quiet", "--collect", f"--unit={unit_name(name)}",
            f"--slice={SLICE}", f"--description=Corral launcher {name}", "--"]
