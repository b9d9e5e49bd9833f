"""Two nodes as network namespaces on one machine, joined to the host by a bridge (etcd and
the controller listen on the host's end), each handler under `ip netns exec` bound to its
namespace's address, launchers in libvirt session mode. Used by tests/test_migration.py and
bench/bench_migrate.py. Root and iproute2 needed.

    with TwoNodes(base_dir, guest_dir) as net:      # bridge, namespaces, etcd, controller
                                                     # (TLSNodes: the same with mutual TLS)
        net.start_handler("na"); net.start_handler("nb")
        ...                                          # net.cluster, net.client, net.addresses
    # everything it made is gone: processes (also libvirt session daemons), cgroups, links
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import uuid
from pathlib import Path

from corral import tls
from corral.client import Client
from tests.cluster import Cluster, Etcd, free_port, private_subnet

NODES = ("na", "nb")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def netns_pids(netns: str) -> list[int]:
    result = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return [int(pid) for pid in result.stdout.split()]


def kill_processes_with_env(text: str) -> None:
    """Session-mode libvirt daemons name their run directory only in their environment."""
    needle = text.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle in handle.read():
                    os.kill(int(entry), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


class HostEtcd(Etcd):
    """An etcd member that also listens on the host end of the bridge."""

    def __init__(self, base: Path, host_ip: str) -> None:
        super().__init__(base)
        self.endpoint = f"http://{host_ip}:{self.client_port}"
        self.listen_urls = f"http://127.0.0.1:{self.client_port},{self.endpoint}"


class TwoNodes:
    """The bridge, the namespaces na and nb, etcd and one controller; handlers on demand."""

    def __init__(self, base: Path, guest_dir: Path, *, prefix: str = "/migration/",
                 heartbeat_seconds: int = 6) -> None:
        self.base, self.guest_dir, self.prefix = base, guest_dir, prefix
        self.heartbeat_seconds = heartbeat_seconds
        tag = uuid.uuid4().hex[:6]
        subnet = private_subnet()
        self.tag = tag
        self.bridge = f"cmb{tag}"
        self.host_ip = f"10.232.{subnet}.1"
        self.addresses = {"na": f"10.232.{subnet}.2", "nb": f"10.232.{subnet}.3"}
        self.netns = {"na": f"corral-ma-{tag}", "nb": f"corral-mb-{tag}"}
        self.links: list[str] = []
        self.cluster: Cluster | None = None
        self.etcd: HostEtcd | None = None
        self.client: Client | None = None
        self.server = ""

    def __enter__(self) -> "TwoNodes":
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self.open_network()
        self.etcd = HostEtcd(self.base, self.host_ip)
        self.etcd.start()
        self.cluster = Cluster(etcd=self.etcd, base=self.base, prefix=self.prefix, guest_dir=self.guest_dir)
        self.server = f"{self.host_ip}:{free_port()}"
        self.cluster.start_controller("c1", listen=self.server, extra=["--insecure"])  # a private test network
        self.client = Client(self.server)

    def open_network(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for node, ns in self.netns.items():
            host_end, node_end = f"cmh{node[-1]}{self.tag}", f"cmn{node[-1]}{self.tag}"
            ip("netns", "add", ns)
            ip("link", "add", host_end, "type", "veth", "peer", "name", node_end)
            self.links.append(host_end)
            ip("link", "set", host_end, "master", self.bridge)
            ip("link", "set", host_end, "up")
            ip("link", "set", node_end, "netns", ns)
            ip("netns", "exec", ns, "ip", "addr", "add", f"{self.addresses[node]}/24", "dev", node_end)
            ip("netns", "exec", ns, "ip", "link", "set", node_end, "up")
            ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def handler_extra(self, node: str) -> list[str]:
        address = self.addresses[node]
        return ["--insecure",  # plaintext on the namespaces' private bridge
                "--listen", f"{address}:0", "--migration-listen", f"{address}:0", "--libvirt-mode", "session",
                "--heartbeat-seconds", str(self.heartbeat_seconds), "--isolation", "on"]

    def start_handler(self, node: str, **kwargs) -> None:
        self.cluster.start_handler(node, extra=self.handler_extra(node),
                                   wrapper=["ip", "netns", "exec", self.netns[node]], **kwargs)

    def other(self, node: str) -> str:
        return "nb" if node == "na" else "na"

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            root = str(self.cluster.node_root)
            incoming = [marker.parent.name for marker in Path(root).glob("*/vms/*/incoming")]
            self.cluster.close()
            kill_processes_with_env(root)
            from handler.isolation import Cgroups, detect_layout
            groups = Cgroups(detect_layout())
            for name in incoming:
                for suffix in ("", "-in"):
                    groups.remove(name + suffix, timeout=0.5)
            self.cluster = None
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd = None
        for ns in self.netns.values():
            for pid in netns_pids(ns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        self.links = []
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class TLSNodes(TwoNodes):
    """TwoNodes with a cluster CA (tests/certs.py): the controller, the node agents and the
    migration proxies speak mutual TLS only, no --insecure anywhere. Each node's certificate
    names it (CN node:NAME, SAN URI corral://node/NAME, DNS NAME.node.corral) and its IP;
    ``client`` uses an admin certificate. ``stream``: the handlers' migration_stream (None:
    their default, tunnelled)."""

    stream: str | None = None

    def open(self) -> None:
        from tests.certs import make_ca  # needs the cryptography package (test extra)
        from tests.test_mtls import TLSCluster
        self.open_network()
        pki = self.base / "pki"
        ca = make_ca(pki)
        self.certs = {
            "ca": ca,
            "server": ca.issue(pki, "server", "corral-controller", ips=(self.host_ip, "127.0.0.1"),
                               uris=("corral://role/controller",)),
            "admin": ca.issue(pki, "admin", "admin", uris=("corral://role/admin",)),
        }
        for node, address in self.addresses.items():
            self.certs[node] = ca.issue(pki, node, f"node:{node}", uris=(f"corral://node/{node}",),
                                        dns=(f"{node}.node.corral",), ips=(address,))
        self.etcd = HostEtcd(self.base, self.host_ip)
        self.etcd.start()
        self.cluster = TLSCluster(certs=self.certs, etcd=self.etcd, base=self.base, prefix=self.prefix,
                                  guest_dir=self.guest_dir)
        self.server = f"{self.host_ip}:{free_port_on(self.host_ip)}"
        config = self.cluster.write_config("controller-c1", {
            "tls_cert_file": self.certs["server"].cert, "tls_key_file": self.certs["server"].key,
            "tls_client_ca_file": ca.cert})
        self.cluster.start_controller("c1", listen=self.server, extra=["--config", config])  # no --insecure
        self.client = Client(self.server, credentials=tls.channel_credentials(
            str(ca.cert), str(self.certs["admin"].cert), str(self.certs["admin"].key)))

    def handler_extra(self, node: str) -> list[str]:
        address = self.addresses[node]
        config = self.cluster.write_config(f"handler-{node}", {
            "tls_ca_file": self.certs["ca"].cert, "tls_cert_file": self.certs[node].cert,
            "tls_key_file": self.certs[node].key})
        return ["--config", config, "--listen", f"{address}:0", "--migration-listen", f"{address}:0",
                "--libvirt-mode", "session", "--heartbeat-seconds", str(self.heartbeat_seconds), "--isolation", "on",
                *(["--migration-stream", self.stream] if self.stream else [])]


def free_port_on(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
