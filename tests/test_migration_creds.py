"""One-off TLS credentials for QEMU's own migration stream (migration_stream: tls), without
guests: what handler/migration_creds.py issues (a CA that signs exactly the two pairs, what
QEMU checks in each), the target proxy handing the client pair only to the migration's source
node over mutual TLS (real sockets, real node certificates: tests/certs.py), and the launcher
writing its pair into its directory without following what is planted there."""
from __future__ import annotations

import os
from pathlib import Path

import libvirt
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from corral.v1 import launcher_pb2
from handler import migration_creds
from handler.migration_proxy import TargetProxy
from launcher import migration, migration_tls
from tests.test_migration_proxy import RUN, node_tls, pki  # noqa: F401 - pki is a fixture


def test_a_one_off_ca_signs_a_server_and_a_client_pair() -> None:
    creds = migration_creds.issue("pet-1234")
    assert creds.server.ca_pem == creds.client.ca_pem
    ca = x509.load_pem_x509_certificate(creds.server.ca_pem.encode())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for pair, purpose in ((creds.server, ExtendedKeyUsageOID.SERVER_AUTH), (creds.client, ExtendedKeyUsageOID.CLIENT_AUTH)):
        cert = x509.load_pem_x509_certificate(pair.cert_pem.encode())
        cert.verify_directly_issued_by(ca)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca  # QEMU insists
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [purpose]
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.digital_signature and usage.key_encipherment
        assert "PRIVATE KEY" in pair.key_pem
    server = x509.load_pem_x509_certificate(creds.server.cert_pem.encode())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert migration_creds.TLS_NAME == migration_tls.TLS_NAME  # the name the source's QEMU checks
    assert names.get_values_for_type(x509.DNSName) == [migration_tls.TLS_NAME]
    # Another migration's CA signs neither.
    other = x509.load_pem_x509_certificate(migration_creds.issue("pet-5678").server.ca_pem.encode())
    with pytest.raises(Exception):
        server.verify_directly_issued_by(other)


def test_a_pair_round_trips_and_junk_is_refused() -> None:
    pair = migration_creds.issue("x").client
    assert migration_creds.Pair.from_json(pair.to_json()) == pair
    for junk in (b"{}", b"not json", b'{"ca_pem": "x", "cert_pem": "y", "key_pem": "z"}', b"x" * 70000):
        with pytest.raises((ValueError, KeyError)):
            migration_creds.Pair.from_json(junk)


def test_a_plan_with_tls_files_asks_libvirt_for_qemus_tls() -> None:
    request = launcher_pb2.MigrateDomainRequest(destination_uri="qemu+unix:///session?socket=/x/mig.sock",
                                                migration_uri="tcp://10.0.0.2:49152", listen_address="10.0.0.2",
                                                allow_post_copy=True)
    request.tls.ca_pem = "ca"
    plan = migration.Plan.from_request(request, post_copy=True)
    assert plan.flags & libvirt.VIR_MIGRATE_TLS and plan.flags & libvirt.VIR_MIGRATE_POSTCOPY
    assert not plan.flags & libvirt.VIR_MIGRATE_TUNNELLED
    assert plan.params[libvirt.VIR_MIGRATE_PARAM_TLS_DESTINATION] == migration_tls.TLS_NAME
    assert plan.params[libvirt.VIR_MIGRATE_PARAM_URI] == "tcp://10.0.0.2:49152"
    request.ClearField("tls")
    assert not migration.Plan.from_request(request, post_copy=True).flags & libvirt.VIR_MIGRATE_TLS


class Incoming:
    """The target side as the proxy sees it: the run migrates here from node na."""

    def __init__(self) -> None:
        self.creds = migration_creds.issue("pet-m")

    def credentials_for(self, uid: str, source_node: str) -> bytes | None:
        return self.creds.client.to_json() if (uid, source_node) == (RUN, "na") else None


def test_the_target_gives_the_client_pair_only_to_the_source_node(pki) -> None:  # noqa: F811
    target = Incoming()
    proxy = TargetProxy("127.0.0.1:0", lambda uid, node: None, tls=node_tls(pki, pki.nb),
                        credentials=target.credentials_for)
    proxy.start()
    try:
        address = f"127.0.0.1:{proxy.port}"
        got = migration_creds.fetch_client_pair(address, "nb", RUN, node_tls(pki, pki.na))
        assert got == target.creds.client
        # A bystander node of the same cluster, another run, or a target that is not nb: nothing.
        with pytest.raises(OSError, match="gave no TLS files"):
            migration_creds.fetch_client_pair(address, "nb", RUN, node_tls(pki, pki.nc))
        with pytest.raises(OSError, match="gave no TLS files"):
            migration_creds.fetch_client_pair(address, "nb", RUN.replace("a", "b"), node_tls(pki, pki.na))
        with pytest.raises(OSError):  # the proxy's certificate names nb, not nc: the source hangs up
            migration_creds.fetch_client_pair(address, "nc", RUN, node_tls(pki, pki.na))
    finally:
        proxy.close()


def test_a_plaintext_proxy_never_hands_out_credentials() -> None:
    target = Incoming()
    proxy = TargetProxy("127.0.0.1:0", lambda uid, node: None, credentials=target.credentials_for)
    proxy.start()
    try:
        import socket
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as conn:
            conn.sendall(b"corral-migration credentials " + RUN.encode() + b"\n")
            assert conn.recv(100) == b""  # closed, nothing sent
    finally:
        proxy.close()


def test_the_launcher_writes_its_pair_without_following_planted_links(tmp_path: Path) -> None:
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    migration_tls.write_qemu_conf(str(vm_dir))
    conf = (vm_dir / ".config" / "libvirt" / "qemu.conf").read_text()
    assert f'migrate_tls_x509_cert_dir = "{vm_dir / "migration-tls"}"' in conf and "migrate_tls_x509_verify = 1" in conf
    assert (vm_dir / "migration-tls").is_dir()  # libvirtd refuses to start without it
    victim = tmp_path / "victim"
    victim.write_text("keep")
    tls_dir = vm_dir / "migration-tls"
    (tls_dir / "ca-cert.pem").symlink_to(victim)
    (tls_dir / "server-key.pem.tmp").symlink_to(victim)
    pair = migration_creds.issue("pet").server
    migration_tls.write_files(str(vm_dir), launcher_pb2.MigrationTLSFiles(
        ca_pem=pair.ca_pem, cert_pem=pair.cert_pem, key_pem=pair.key_pem), server=True)
    assert victim.read_text() == "keep"
    assert not (tls_dir / "ca-cert.pem").is_symlink() and (tls_dir / "ca-cert.pem").read_text() == pair.ca_pem
    assert (tls_dir / "server-key.pem").read_text() == pair.key_pem
    assert os.stat(tls_dir / "server-key.pem").st_mode & 0o777 == 0o600
    assert os.stat(tls_dir).st_mode & 0o777 == 0o700
