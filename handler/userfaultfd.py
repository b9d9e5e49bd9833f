"""Whether this node can be the target of a post-copy migration, checked once at start.

Post-copy runs the guest on the target while its memory is still on the source: the target's
QEMU catches each touch of a missing page with userfaultfd(2). QEMU runs as the VM's own
unprivileged user, and an unprivileged process may ask for kernel-mode page faults only when
``vm.unprivileged_userfaultfd`` is 1 (the default is 0 since Linux 5.11). QEMU 8.1 and later can
also open /dev/userfaultfd, which needs only access to that device; QEMU 7.2 (Debian 12) uses
the system call alone (its binary has no /dev/userfaultfd path), so the sysctl is what counts
there. The handler reports the result in its node record (``post_copy_ready``,
``post_copy_message``); the controller turns post-copy off for a migration into a node that
cannot do it and says why in the Migration's status."""
from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

SYSCTL = "/proc/sys/vm/unprivileged_userfaultfd"
HOW_TO_ENABLE = ("enable it with `sysctl -w vm.unprivileged_userfaultfd=1` and keep it across reboots "
                 "with a file in /etc/sysctl.d/ (`echo vm.unprivileged_userfaultfd=1 > "
                 "/etc/sysctl.d/60-corral-postcopy.conf`; scripts/install.sh writes it)")


@dataclass(frozen=True)
class PostCopyCheck:
    """The outcome: ``ready`` and one sentence for the node record and the log."""

    ready: bool
    message: str


def check(sysctl_path: str = SYSCTL, *, tunnelled: bool = False) -> PostCopyCheck:
    """Reads the sysctl (a path so tests can hand it a file). ``tunnelled``: the node's
    migrations go through the mutual-TLS proxy (VIR_MIGRATE_TUNNELLED), which libvirt cannot
    use for post-copy whatever the kernel allows."""
    try:
        with open(sysctl_path) as f:
            value = f.read().strip()
    except OSError as exc:
        value, problem = "", f"cannot read {sysctl_path} ({exc.strerror or exc}): userfaultfd may be missing"
    else:
        problem = "" if value == "1" else (
            f"vm.unprivileged_userfaultfd is {value or 'empty'}: the VM users' QEMU cannot use userfaultfd")
    if problem:
        return PostCopyCheck(False, f"post-copy migration into this node is unavailable: {problem}; "
                                    f"{HOW_TO_ENABLE}")
    if tunnelled:
        return PostCopyCheck(False, "post-copy migration is unavailable: userfaultfd is allowed "
                                    "(vm.unprivileged_userfaultfd=1), but this node's migrations are tunnelled "
                                    "through the mutual-TLS proxy and libvirt cannot tunnel post-copy "
                                    "(see docs/migration-security.md)")
    return PostCopyCheck(True, "post-copy migration available: vm.unprivileged_userfaultfd=1 "
                               "(the VM users' QEMU may use userfaultfd)")


def log_check(result: PostCopyCheck) -> None:
    """Said once at start: a warning when post-copy cannot run here (migrations still work, pre-copy)."""
    if result.ready:
        log.info("%s", result.message)
    else:
        log.warning("%s; migrations into this node that allow post-copy run pre-copy only", result.message)
