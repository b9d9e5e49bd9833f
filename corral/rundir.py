"""A run's directory, as the handler (which makes it) and the launcher (which lives in it)
both know it. With per-VM isolation it belongs to the VM's own user."""
from __future__ import annotations

import os

#: The run's VM (a serialized corral.v1.VirtualMachine) the launcher reads; the handler keeps
#: its own record elsewhere (handler/vm_files.py).
VM_FILE = "vm.binpb"
#: The launcher's gRPC LauncherService.
SOCKET_FILE = "launcher.sock"
LOG_FILE = "launcher.log"
PID_FILE = "launcher.pid"
#: QEMU's VNC display (the guest's screen), a unix socket only the run's launcher dials.
VNC_SOCKET_FILE = "vnc.sock"
#: The cloud-init NoCloud seed (an ISO 9660 image, label cidata), made by the handler.
CLOUD_INIT_SEED_FILE = "cidata.iso"
#: Host CPUs the handler gave a run with dedicated CPUs (handler/cpus.py): "3,5", vCPU i on the i-th.
CPUSET_FILE = "cpuset"


def ephemeral_disk_path(run_dir: str, name: str) -> str:
    """The qcow2 overlay of ephemeral disk `name` (a DNS label) in a run's directory: made by
    the handler before the launcher starts, gone with the directory."""
    return os.path.join(run_dir, f"disk-{name}.qcow2")


def cloud_init_seed_path(run_dir: str) -> str:
    return os.path.join(run_dir, CLOUD_INIT_SEED_FILE)


def format_cpuset(cpus: tuple[int, ...]) -> str:
    return ",".join(str(cpu) for cpu in cpus)


def parse_cpuset(text: str) -> tuple[int, ...]:
    """A cpuset file's CPUs; ValueError for anything but distinct non-negative numbers."""
    cpus = tuple(int(part) for part in text.strip().split(",") if part.strip())
    if any(cpu < 0 for cpu in cpus) or len(set(cpus)) != len(cpus):
        raise ValueError(f"not a list of distinct CPUs: {text!r}")
    return cpus
