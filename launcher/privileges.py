"""Per-VM isolation, the launcher's half: leave root for the VM's own user.

With ``--isolate`` the handler starts the launcher as root (so the interpreter and its
imports can live anywhere, e.g. a venv below /root, and a warm spare can serve any VM) and
the launcher, before it touches anything in its VM directory, joins the cgroups it was
given and switches for good to the directory's owner: real, effective and saved uid and gid,
supplementary group kvm only (for /dev/kvm). The owner is read from the directory itself
(stat), which only root can change; never from a file inside it, which the VM's user could
rewrite. QEMU, forked by the embedded libvirt driver, inherits all of it.
"""
from __future__ import annotations

import ctypes
import grp
import logging
import os

log = logging.getLogger(__name__)

PR_SET_NO_NEW_PRIVS = 38


class PrivilegeError(Exception):
    """The launcher cannot run as the VM's user."""


def kvm_gid() -> int | None:
    try:
        return grp.getgrnam("kvm").gr_gid
    except KeyError:
        return None


def join_cgroups(procs_files: list[str]) -> None:
    """Move this process into each cgroup (a ``cgroup.procs`` file per hierarchy)."""
    for path in procs_files:
        with open(path, "w", encoding="ascii") as handle:
            handle.write(f"{os.getpid()}\n")


def drop_to_owner(vm_dir: str) -> tuple[int, int]:
    """Become the owner of vm_dir (must not be root); returns (uid, gid)."""
    info = os.stat(vm_dir, follow_symlinks=False)
    uid, gid = info.st_uid, info.st_gid
    if uid == 0 or gid == 0:
        raise PrivilegeError(f"{vm_dir} is owned by root: refusing to run the VM as root")
    if os.geteuid() != 0:
        if os.geteuid() != uid:
            raise PrivilegeError(f"running as uid {os.geteuid()}, not root: cannot become {uid}")
        return uid, gid
    kvm = kvm_gid()
    os.setgroups([kvm] if kvm is not None else [])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if 0 in os.getresuid() or 0 in os.getresgid():
        raise PrivilegeError("still root after dropping privileges")
    _no_new_privs()
    # Nothing of root's environment: libvirt looks for client config under HOME/XDG dirs.
    os.environ["HOME"] = vm_dir
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR", "XDG_DATA_HOME"):
        os.environ.pop(name, None)
    os.environ["USER"] = os.environ["LOGNAME"] = str(uid)
    return uid, gid


def _no_new_privs() -> None:
    """No setuid binary run from here (or from QEMU) can gain privileges again."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_NO_NEW_PRIVS) failed: errno %d", ctypes.get_errno())
    except OSError as exc:
        log.warning("cannot set no_new_privs: %s", exc)
