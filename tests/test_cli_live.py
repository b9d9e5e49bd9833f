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
