"""The corral command against a real controller (no guest needed: the VMs stay Pending)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.cluster import REPO, wait_for

MANIFEST = """\
apiVersion: corral.dev/v1
kind: VirtualMachine
metadata:
  name: {name}
  labels: {{app: cli}}
spec:
  vcpus: 1
  memoryMib: 128
  boot:
    kernel: {{kernelPath: /boot/vmlinuz, cmdline: "console=ttyS0 <&>"}}
"""


def corral(cluster, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corral.cli", "--server", cluster.servers, *args],
                          input=stdin, capture_output=True, text=True, cwd=REPO, timeout=60)


def test_create_get_describe_delete(cluster):
    cluster.start_controller()
    created = corral(cluster, "create", "-f", "-", stdin=MANIFEST.format(name="cli-a"))
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "virtualmachine/cli-a created"

    again = corral(cluster, "create", "-f", "-", stdin=MANIFEST.format(name="cli-a"))
    assert again.returncode == 1
    assert "ALREADY_EXISTS" in again.stderr

    shown = json.loads(corral(cluster, "get", "vm", "cli-a", "-o", "json").stdout)
    assert shown["metadata"]["name"] == "cli-a"
    assert shown["spec"]["boot"]["kernel"]["cmdline"] == "console=ttyS0 <&>"

    # No node exists: the VM stays Pending and describe says why.
    wait_for(lambda: "Unschedulable" in corral(cluster, "describe", "vm", "cli-a").stdout, timeout=15,
             what="the Unschedulable condition in describe")
    table = corral(cluster, "get", "vms")
    assert table.returncode == 0 and "cli-a" in table.stdout and "Pending" in table.stdout

    deleted = corral(cluster, "delete", "vm", "cli-a", "--wait")
    assert deleted.returncode == 0, deleted.stderr
    missing = corral(cluster, "get", "vm", "cli-a")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_bad_manifest_sends_nothing(cluster):
    cluster.start_controller()
    bad = corral(cluster, "create", "-f", "-", stdin=MANIFEST.format(name="Bad_Name"))
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT" in bad.stderr and "DNS-1123" in bad.stderr
    typo = corral(cluster, "create", "-f", "-", stdin=MANIFEST.format(name="ok").replace("vcpus", "vcpu"))
    assert typo.returncode == 1 and "vcpu" in typo.stderr
    listed = corral(cluster, "get", "vms", "-o", "name")
    assert listed.returncode == 0 and listed.stdout.strip() == ""


def test_unreachable_server_is_a_clear_error(cluster):
    result = subprocess.run([sys.executable, "-m", "corral.cli", "--server", "127.0.0.1:1", "get", "vms"],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr


GUEST_MANIFEST = """\
apiVersion: corral.dev/v1
kind: VirtualMachine
metadata:
  name: {name}
  labels: {{app: habits}}
spec:
  vcpus: 1
  memoryMib: 128
  terminationGracePeriodSeconds: 0
  boot:
    kernel: {{kernelPath: {guest}/vmlinuz, initrdPath: {guest}/initrd.gz, cmdline: console=ttyS0}}
"""


def test_kubectl_habits_on_real_guests_and_a_grace_0_delete(cluster):
    """What `get -o name` prints goes back in as names, verbs print the status after the node
    acted, and deleting a VM whose grace period is 0 destroys it at once (KubeVirt's meaning)."""
    import time

    from tests.cluster import qemu_pid_for
    from tests.test_never_twice import running

    cluster.start_controller()
    cluster.start_handler("n1", vcpus=1, extra=["--cpu-allocation-ratio", "4"])  # 1 CPU takes 2+ VMs
    names = ["habit-a", "habit-b"]
    for name in names:
        made = corral(cluster, "create", "-f", "-", stdin=GUEST_MANIFEST.format(name=name, guest=cluster.guest_dir))
        assert made.returncode == 0, made.stderr
    listed = corral(cluster, "get", "vms", "-l", "app=habits", "-o", "name").stdout.split()
    assert listed == [f"virtualmachine/{name}" for name in names]
    waited = corral(cluster, "wait", *listed, "--for", "phase=Running", "--timeout", "90")
    assert waited.returncode == 0, waited.stderr
    vms = [cluster.get(name) for name in names]
    assert {vm.status.node_name for vm in vms} == {"n1"}
    assert all(vm.spec.termination_grace_period_seconds == 0
               and vm.spec.HasField("termination_grace_period_seconds") for vm in vms)

    paused = corral(cluster, "pause", "vm/habit-a", "habit-b")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.splitlines() == [f"virtualmachine/{name} paused (Paused)" for name in names]
    unpaused = corral(cluster, "unpause", *listed)
    assert unpaused.stdout.splitlines() == [f"virtualmachine/{name} unpaused (Running)" for name in names]
    mixed = corral(cluster, "delete", "vm/habit-a", "node/n1")
    assert mixed.returncode != 0 and "nodes cannot be deleted" in mixed.stderr

    qemus = [qemu_pid_for(vm.status.instance_uid) for vm in vms]
    gone_at: dict[int, float] = {}
    started = time.monotonic()
    deleting = subprocess.Popen([sys.executable, "-m", "corral.cli", "--server", cluster.servers, "delete",
                                 *listed, "--wait"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while deleting.poll() is None and time.monotonic() - started < 60:
        for pid in qemus:
            if pid not in gone_at and not running(pid):
                gone_at[pid] = time.monotonic()
        time.sleep(0.02)
    returned = time.monotonic()
    out, err = deleting.communicate(timeout=5)
    assert deleting.returncode == 0, err
    assert out.splitlines() == [f"virtualmachine/{name} deleted" for name in names]
    assert len(gone_at) == 2, "delete returned while a QEMU still ran"
    last_gone = max(gone_at.values())
    print(f"grace-0 delete of 2 VMs: QEMU gone {last_gone - started:.2f}s after the call, "
          f"delete --wait returned {returned - last_gone:.2f}s after that")
    assert last_gone - started < 5, "a grace period of 0 must not wait for the guest"
    assert returned - last_gone < 3
