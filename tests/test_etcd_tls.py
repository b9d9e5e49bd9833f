"""Corral on an existing, secured etcd: a 3-member cluster on loopback serving clients over TLS
with client certificates (--client-cert-auth), user/password auth with a role limited to
Corral's key prefix, and failover when the member a controller uses is killed."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pyetcd import transactions as T

from corral.async_store import AsyncStore
from corral.client import Client
from corral.resources import VMS
from corral.store import Store, StoreError
from corral.v1 import vm_pb2
from tests.certs import make_ca
from tests.cluster import REPO, Cluster, free_port, wait_for

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed")


class Member:
    def __init__(self, name: str, base: Path) -> None:
        self.name = name
        self.client_port, self.peer_port = free_port(), free_port()
        self.data_dir = base / name
        self.log_path = base / f"{name}.log"
        self.process: subprocess.Popen | None = None

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def client_url(self, scheme: str) -> str:
        return f"{scheme}://127.0.0.1:{self.client_port}"


class EtcdCluster:
    """etcd members on loopback: clients over TLS with client certificates (or plaintext),
    peers over plaintext loopback."""

    def __init__(self, base: Path, size: int, certs: dict | None) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.members = [Member(f"m{i}", base) for i in range(size)]
        self.certs = certs
        self.scheme = "https" if certs else "http"

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url(self.scheme) for m in self.members]

    def start(self) -> None:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        token = uuid.uuid4().hex
        for member in self.members:
            url = member.client_url(self.scheme)
            command = ["etcd", "--name", member.name, "--data-dir", str(member.data_dir),
                       "--listen-client-urls", url, "--advertise-client-urls", url,
                       "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
                       "--initial-cluster", initial, "--initial-cluster-state", "new",
                       "--initial-cluster-token", token]
            if self.certs:
                command += ["--client-cert-auth", "--trusted-ca-file", str(self.certs["ca"].cert),
                            "--cert-file", str(self.certs["etcd"].cert), "--key-file", str(self.certs["etcd"].key)]
            member.process = subprocess.Popen(command, stdout=open(member.log_path, "ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: self.etcdctl("endpoint", "health", "--cluster").returncode == 0, timeout=20,
                 interval=0.3, what="the etcd cluster to be healthy")

    def etcdctl(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess:
        command = ["etcdctl", "--endpoints", ",".join(self.endpoints), "--dial-timeout", "2s"]
        if self.certs:
            command += ["--cacert", str(self.certs["ca"].cert), "--cert", str(self.certs["root"].cert),
                        "--key", str(self.certs["root"].key)]
        if user:
            command += ["--user", user]
        return subprocess.run([*command, *args], capture_output=True, text=True, timeout=20,
                              env={**os.environ, "ETCDCTL_API": "3"})

    def kill(self, member: Member) -> None:
        member.process.send_signal(signal.SIGKILL)
        member.process.wait()

    def stop(self) -> None:
        for member in self.members:
            if member.process and member.process.poll() is None:
                self.kill(member)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("etcd-certs")
    ca = make_ca(directory)
    return {
        "ca": ca,
        "other-ca": make_ca(directory, "other-ca"),
        "etcd": ca.issue(directory, "etcd", "etcd", ips=("127.0.0.1",), dns=("localhost",)),
        "root": ca.issue(directory, "root", "root"),
        "corral": ca.issue(directory, "corral", "corral"),
    }


class EtcdTLSCluster(Cluster):
    """Controllers against the TLS etcd cluster, with the settings in `etcd_env`."""

    def __init__(self, *, etcd_env: dict[str, str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.etcd_env = etcd_env

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.etcd_env}


class _Endpoints:
    def __init__(self, endpoints: list[str]) -> None:
        self.endpoint = ",".join(endpoints)


def _tls_env(certs: dict, ca: str = "ca") -> dict[str, str]:
    return {"CORRAL_ETCD_CA_FILE": str(certs[ca].cert), "CORRAL_ETCD_CERT_FILE": str(certs["corral"].cert),
            "CORRAL_ETCD_KEY_FILE": str(certs["corral"].key)}


def _vm(name: str) -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = name
    vm.spec.vcpus = 1
    vm.spec.memory_mib = 64
    vm.spec.boot.kernel.kernel_path = "/nonexistent/vmlinuz"  # never scheduled: no node exists
    return vm


def _etcd_ports_of(pid: int, ports: set[int]) -> set[int]:
    """The etcd client ports process pid has established TCP connections to."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):  # gRPC uses v4-mapped IPv6 sockets
        with open(path) as table:
            for line in list(table)[1:]:
                fields = line.split()
                remote_port = int(fields[2].split(":")[1], 16)
                if fields[3] == "01" and fields[9] in inodes and remote_port in ports:
                    found.add(remote_port)
    return found


def test_wrong_ca_stops_the_controller_with_a_clear_error(tmp_path, certs):
    etcd = EtcdCluster(tmp_path / "etcd", 1, certs)
    etcd.start()
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO), "CORRAL_ETCD_ENDPOINTS": ",".join(etcd.endpoints),
               **_tls_env(certs, ca="other-ca")}
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "controller.main", "--listen", f"127.0.0.1:{free_port()}"],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, done.stderr
        assert "certificate that the configured CA does not accept" in done.stderr, done.stderr
        assert f"127.0.0.1:{etcd.members[0].client_port}" in done.stderr
        assert time.monotonic() - started < 15
        # No client certificate at all: etcd (--client-cert-auth) refuses, and that is said too.
        with pytest.raises(StoreError, match="refused the TLS handshake"):
            Store(endpoints=etcd.endpoints, ca_file=str(certs["ca"].cert))
        # A missing file is named by the settings.
        env["CORRAL_ETCD_CA_FILE"] = str(tmp_path / "missing.pem")
        done = subprocess.run([sys.executable, "-m", "controller.main"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 2 and "missing.pem' does not exist" in done.stderr, done.stderr
    finally:
        etcd.stop()


def test_three_member_tls_cluster_survives_losing_the_member_in_use(tmp_path, certs):
    etcd = EtcdCluster(tmp_path / "etcd", 3, certs)
    etcd.start()
    cluster = EtcdTLSCluster(etcd_env=_tls_env(certs), etcd=_Endpoints(etcd.endpoints), base=tmp_path,
                             prefix=f"/t-{uuid.uuid4().hex[:8]}/", guest_dir=Path("/nonexistent"))
    try:
        address = cluster.start_controller("c1")
        client = Client([address], timeout=10)
        for i in range(5):
            client.create_vm(_vm(f"vm{i}"))
        names = {vm.metadata.name for vm in client.list_vms()}
        assert names == {f"vm{i}" for i in range(5)}

        pid = cluster.controllers["c1"][0].pid
        by_port = {m.client_port: m for m in etcd.members}
        in_use = wait_for(lambda: _etcd_ports_of(pid, set(by_port)), timeout=5, what="the controller's etcd connection")
        victim = by_port[sorted(in_use)[0]]
        etcd.kill(victim)

        # The API keeps answering (after failover), with every VM, and takes writes.
        listed = wait_for(lambda: {vm.metadata.name for vm in client.list_vms()}, timeout=20,
                          interval=0.3, what="the API to answer after the etcd member died")
        assert listed == names
        # A watch opened after the failover sees new writes (watch streams follow the failover).
        revision = client.get_vm("vm0").metadata.resource_version
        events = client.watch_vms(resource_version=revision, timeout=15)
        client.create_vm(_vm("after-failover"))
        seen = next(e for e in events if e.virtual_machine.metadata.name == "after-failover")
        assert seen.virtual_machine.metadata.name == "after-failover"
        events.close()
        assert {vm.metadata.name for vm in client.list_vms()} == names | {"after-failover"}
        now_using = _etcd_ports_of(pid, set(by_port))
        assert victim.client_port not in now_using and now_using
        # The controller is still well: it keeps leading (its leader key is renewed).
        assert cluster.controllers["c1"][0].poll() is None
        client.close()
    finally:
        cluster.close()
        etcd.stop()


def test_username_and_password_with_a_prefix_role(tmp_path, certs):
    etcd = EtcdCluster(tmp_path / "etcd", 1, None)  # plaintext: the token rides on an insecure channel
    etcd.start()
    prefix = "/corral-shared/"
    try:
        for args in (["user", "add", "root:rootpw"], ["role", "add", "corral"],
                     ["role", "grant-permission", "corral", "--prefix=true", "readwrite", prefix],
                     ["user", "add", "corral:s3cret"], ["user", "grant-role", "corral", "corral"],
                     ["auth", "enable"]):
            done = etcd.etcdctl(*args)
            assert done.returncode == 0, done.stderr
        assert etcd.etcdctl("put", "/other-tenant/x", "1", user="root:rootpw").returncode == 0

        password_file = tmp_path / "etcd-password"
        password_file.write_text("s3cret\n")
        env = {"CORRAL_ETCD_USERNAME": "corral", "CORRAL_ETCD_PASSWORD_FILE": str(password_file)}
        cluster = EtcdTLSCluster(etcd_env=env, etcd=_Endpoints(etcd.endpoints), base=tmp_path,
                                 prefix=prefix, guest_dir=Path("/nonexistent"))
        try:
            address = cluster.start_controller("c1")
            with Client([address]) as client:
                client.create_vm(_vm("authed"))
                assert [vm.metadata.name for vm in client.list_vms()] == ["authed"]
            stored = etcd.etcdctl("get", "--prefix", "--keys-only", prefix, user="corral:s3cret")
            assert f"{prefix}vms/authed" in stored.stdout
            assert f"{prefix}leader" in stored.stdout
        finally:
            cluster.close()

        # The role reaches nothing outside the prefix.
        store = Store(endpoints=etcd.endpoints, prefix="/other-tenant/", username="corral", password="s3cret")
        with pytest.raises(StoreError, match="permission denied"):
            store.range(b"/other-tenant/x")
        store.close()
        # A wrong password stops a daemon at start, saying so.
        bad = {**os.environ, "PYTHONPATH": str(REPO), "CORRAL_ETCD_ENDPOINTS": ",".join(etcd.endpoints),
               "CORRAL_ETCD_USERNAME": "corral", "CORRAL_ETCD_PASSWORD": "wrong"}
        done = subprocess.run([sys.executable, "-m", "controller.main", "--listen", f"127.0.0.1:{free_port()}"],
                              env=bad, cwd=REPO, capture_output=True, text=True, timeout=30)
        assert done.returncode == 2
        assert "etcd refused to authenticate user 'corral'" in done.stderr, done.stderr
    finally:
        etcd.stop()


def test_a_token_etcd_refuses_is_replaced(tmp_path, caplog):
    """A token etcd no longer accepts (expired, or issued before an auth change) is replaced
    and the call retried, transparently."""
    etcd = EtcdCluster(tmp_path / "etcd", 1, None)
    etcd.start()
    try:
        for args in (["user", "add", "root:rootpw"], ["auth", "enable"]):
            assert etcd.etcdctl(*args).returncode == 0
        store = Store(endpoints=etcd.endpoints, prefix="/p/", username="root", password="rootpw")
        store.revision()
        caplog.set_level("INFO", logger="corral.tls")
        store.auth._token = "bogus"  # what etcd says "invalid auth token" to
        assert store.revision() > 0
        assert "authenticating again" in caplog.text
        # Watches carry the token too.
        watch = store.watch_key(b"/p/k", start_revision=store.revision() + 1)
        store.txn([], [T.Put(b"/p/k", b"v")])
        response = next(r for r in watch.responses(timeout=5) if r is not None)
        assert response.events[0].kv.value == b"v"
        watch.close()
        # So do the coroutines the controller's API uses (corral/async_store.py).
        store.auth._token = "bogus"
        caplog.clear()
        vm = vm_pb2.VirtualMachine()
        vm.metadata.name = "async"

        async def create() -> vm_pb2.VirtualMachine:
            async_store = AsyncStore(store)
            try:
                return await async_store.create(VMS, vm)
            finally:
                await async_store.close()

        assert asyncio.run(create()).metadata.resource_version > 0
        assert store.get(VMS, "async").metadata.name == "async" and store.auth.fresh_token() != "bogus"
        store.close()
    finally:
        etcd.stop()
