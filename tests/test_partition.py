"""A node cut off by a network partition: its handler runs in its own network namespace,
joined to the rest (etcd, controller, the other node) by a veth pair; `ip link set down`
cuts it. The cut-off node fences its guest before its lease can expire; the VM then runs on
the other node, and at no instant do two copies run."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from corral.v1 import vm_pb2
from tests.cluster import Cluster, Etcd, free_port, private_subnet, qemu_pid_for, wait_for
from tests.test_faults import CopySampler, kill
from tests.test_never_twice import launcher_pids, running

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def network(tmp_path):
    """A namespace 'node' at 10.231.N.2 reaching the host at 10.231.N.1 over a veth pair."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("needs root and iproute2 for network namespaces")
    tag = uuid.uuid4().hex[:6]
    netns, host_end, node_end = f"corral-{tag}", f"ch{tag}", f"cn{tag}"
    subnet = private_subnet()
    host_ip, node_ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    ip("netns", "add", netns)
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", node_end)
        ip("link", "set", node_end, "netns", netns)
        ip("addr", "add", f"{host_ip}/24", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("netns", "exec", netns, "ip", "addr", "add", f"{node_ip}/24", "dev", node_end)
        ip("netns", "exec", netns, "ip", "link", "set", node_end, "up")
        ip("netns", "exec", netns, "ip", "link", "set", "lo", "up")
        yield {"netns": netns, "host_end": host_end, "host_ip": host_ip}
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


class HostEtcd(Etcd):
    """An etcd member that also listens on the host end of the veth pair."""

    def __init__(self, base: Path, host_ip: str) -> None:
        super().__init__(base)
        self.endpoint = f"http://{host_ip}:{self.client_port}"
        self.listen_urls = f"http://127.0.0.1:{self.client_port},{self.endpoint}"


@pytest.mark.slow
@pytest.mark.parametrize("kill_launcher", [False, True], ids=["cut", "cut-and-launcher-killed"])
def test_partitioned_node_fences_and_its_vm_runs_elsewhere_never_twice(network, guest_dir, tmp_path, kill_launcher):
    """With kill_launcher, the run's launcher is also killed just after the cut: the cut-off
    handler starts another, and the guest must still end before it runs elsewhere."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed")
    etcd = HostEtcd(tmp_path, network["host_ip"])
    etcd.start()
    cluster = Cluster(etcd=etcd, base=tmp_path, prefix="/partition/", guest_dir=guest_dir)
    try:
        address = f"{network['host_ip']}:{free_port()}"
        cluster.start_controller("c1", listen=address, extra=["--insecure"])  # a private test network
        cluster.start_handler("cut", extra=["--heartbeat-seconds", "6"],
                              wrapper=["ip", "netns", "exec", network["netns"]])
        cluster.create(cluster.guest_vm("pet"))
        vm = cluster.wait_phase("pet", RUNNING, timeout=60)
        assert vm.status.node_name == "cut"
        cluster.start_handler("safe", extra=["--heartbeat-seconds", "6"])
        qemu = wait_for(lambda: qemu_pid_for(vm.status.instance_uid), timeout=10, what="QEMU")
        with CopySampler(str(cluster.node_root)) as sampler:
            ip("link", "set", network["host_end"], "down")  # the partition
            cut_at = time.monotonic()
            if kill_launcher:
                for pid in launcher_pids(str(cluster.state_dir("cut"))):
                    kill(pid)
            wait_for(lambda: not running(qemu), timeout=15, what="the cut-off node to fence")
            fenced_after = time.monotonic() - cut_at
            moved = wait_for(lambda: (v := cluster.get("pet")).status.phase == RUNNING
                             and v.status.node_name == "safe" and v, timeout=45, what="pet running on safe")
            recovery = time.monotonic() - cut_at
            ip("link", "set", network["host_end"], "up")  # heal: the old node must not come back to life
            time.sleep(8)
        print(f"partition: guest fenced after {fenced_after:.1f}s, RUNNING on the other node after {recovery:.1f}s")
        sampler.assert_never_twice()
        assert recovery < 30
        after = cluster.get("pet")
        assert after.status.node_name == "safe" and after.status.instance_uid == moved.status.instance_uid
        assert qemu_pid_for(vm.status.instance_uid) is None
    finally:
        cluster.close()
        etcd.stop()
