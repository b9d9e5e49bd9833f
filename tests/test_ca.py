"""corral-ca: what it writes (modes, refusals, names), that its certificates read as the
identities corral/identity.py defines, and that a real controller and handler accept them with
the right roles; then the CLI with nothing but a client config file, as admin and as viewer."""
from __future__ import annotations

import stat
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corral import ca, tls
from corral.identity import Identity, identity_of
from corral.v1 import handler_pb2, handler_pb2_grpc, vm_pb2, vm_pb2_grpc
from tests.certs import Issued
from tests.cluster import REPO, wait_for
from tests.test_mtls import TLSCluster, _pending_vm, _refused


def _auth_context(path: Path) -> dict[str, list[bytes]]:
    """What gRPC's auth context says of a peer presenting this certificate."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [*sans.get_values_for_type(x509.UniformResourceIdentifier), *sans.get_values_for_type(x509.DNSName),
             *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))]
    return {"transport_security_type": [b"ssl"],
            "x509_common_name": [a.value.encode() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)],
            "x509_subject_alternative_name": [name.encode() for name in names]}


def _usages(path: Path) -> set:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_issued_certificates_are_the_identities_corral_reads(tmp_path):
    pki = tmp_path / "pki"
    assert ca.main(["init", str(pki)]) == 0
    assert stat.S_IMODE(pki.stat().st_mode) == 0o700
    assert stat.S_IMODE((pki / "ca-key.pem").stat().st_mode) == 0o600
    assert ca.main(["issue", "controller", "c1", "--ca-dir", str(pki), "--ip", "127.0.0.1", "--dns", "localhost"]) == 0
    assert ca.main(["issue", "node", "n1", "--ca-dir", str(pki), "--ip", "10.0.0.11"]) == 0
    assert ca.main(["issue", "user", "alice", "--ca-dir", str(pki), "--role", "viewer"]) == 0
    assert ca.main(["issue", "user", "root", "--ca-dir", str(pki), "--role", "admin", "--out", str(tmp_path / "u")]) == 0
    expected = {
        pki / "controller-c1.pem": Identity("user", "c1", "controller"),
        pki / "node-n1.pem": Identity("node", "n1"),
        pki / "user-alice.pem": Identity("user", "alice", "viewer"),
        tmp_path / "u" / "user-root.pem": Identity("user", "root", "admin"),
    }
    for path, identity in expected.items():
        assert identity_of(_auth_context(path)) == identity, path
        key = path.with_name(path.name.replace(".pem", "-key.pem"))
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        tls.ssl_context(str(pki / "ca.pem"), str(path), str(key))  # a pair, loadable
    assert b"n1.node.corral" in _auth_context(pki / "node-n1.pem")["x509_subject_alternative_name"]
    assert b"10.0.0.11" in _auth_context(pki / "node-n1.pem")["x509_subject_alternative_name"]
    both = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert _usages(pki / "controller-c1.pem") == both and _usages(pki / "node-n1.pem") == both
    assert _usages(pki / "user-alice.pem") == {ExtendedKeyUsageOID.CLIENT_AUTH}


@pytest.mark.parametrize("argv,message", [
    (["issue", "node", "../etc"], "is not a DNS-1123 label"),
    (["issue", "node", "N1"], "is not a DNS-1123 label"),
    (["issue", "user", "a/b", "--role", "admin"], "is not a DNS-1123 label"),
    (["issue", "user", "alice"], "needs --role admin or --role viewer"),
    (["issue", "node", "n2", "--role", "admin"], "--role is for users"),
    (["issue", "user", "bob", "--role", "admin", "--ip", "10.0.0.1"], "names no addresses"),
    (["issue", "node", "n2", "--ip", "10.0.0.300"], "is not an IP address"),
    (["issue", "node", "n2", "--dns", "a..b"], "is not a DNS name"),
    (["issue", "node", "n1"], "exist: pass --force"),
])
def test_refusals(tmp_path, capsys, argv, message):
    pki = tmp_path / "pki"
    ca.init_ca(pki)
    ca.issue(pki, "node", "n1")
    before = sorted(p.name for p in pki.iterdir())
    assert ca.main([*argv, "--ca-dir", str(pki)]) != 0
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in pki.iterdir()) == before  # nothing half-written


def test_no_overwrite_without_force(tmp_path, capsys):
    pki = tmp_path / "pki"
    assert ca.main(["init", str(pki)]) == 0
    original = (pki / "ca.pem").read_bytes()
    assert ca.main(["init", str(pki)]) == 1
    assert "pass --force" in capsys.readouterr().err and (pki / "ca.pem").read_bytes() == original
    assert ca.main(["issue", "node", "n1", "--ca-dir", str(tmp_path / "nowhere")]) == 1
    assert "run corral-ca init" in capsys.readouterr().err
    assert ca.main(["issue", "node", "n1", "--ca-dir", str(pki)]) == 0
    first = (pki / "node-n1.pem").read_bytes()
    assert ca.main(["issue", "node", "n1", "--ca-dir", str(pki), "--force"]) == 0
    assert (pki / "node-n1.pem").read_bytes() != first
    assert stat.S_IMODE((pki / "node-n1-key.pem").stat().st_mode) == 0o600
    # A symlink planted where a key will go is not followed, even with --force.
    (pki / "node-n2-key.pem").symlink_to(tmp_path / "elsewhere")
    assert ca.main(["issue", "node", "n2", "--ca-dir", str(pki), "--force"]) == 1
    assert not (tmp_path / "elsewhere").exists()


# -- a real controller and handler with corral-ca's certificates ------------------------------------

@pytest.fixture(scope="module")
def issued(tmp_path_factory) -> dict[str, Issued]:
    pki = tmp_path_factory.mktemp("pki") / "pki"
    ca.init_ca(pki)
    made = {"ca": Issued(pki / "ca.pem", pki / "ca-key.pem")}
    for key, kind, name, options in (
            ("server", "controller", "c1", {"ips": ["127.0.0.1"], "dns": ["localhost"]}),
            ("n1", "node", "n1", {"ips": ["127.0.0.1"]}),
            ("admin", "user", "root", {"role": "admin"}),
            ("viewer", "user", "alice", {"role": "viewer"})):
        made[key] = Issued(*ca.issue(pki, kind, name, **options))
    return made


@pytest.fixture(scope="module")
def ca_cluster(etcd, issued, tmp_path_factory):
    base = tmp_path_factory.mktemp("ca-cluster")
    made = TLSCluster(certs=issued, etcd=etcd, base=base, prefix=f"/t-{uuid.uuid4().hex[:8]}/",
                      guest_dir=Path("/nonexistent"))
    made.start_tls_controller()
    made.start_tls_handler("n1", "n1")  # registers and is Ready: n1's certificate works as n1
    yield made
    made.close()


def test_a_node_certificate_works_for_its_node_only_and_roles_hold(ca_cluster):
    handler = handler_pb2_grpc.HandlerServiceStub(ca_cluster.secure_channel("n1"))
    stream = handler.WatchAssignments(handler_pb2.WatchAssignmentsRequest(node_name="n1"), timeout=10)
    assert next(stream).type == handler_pb2.ASSIGNMENT_EVENT_TYPE_SYNCED
    stream.cancel()
    error = _refused(lambda: next(handler.WatchAssignments(handler_pb2.WatchAssignmentsRequest(node_name="n2"),
                                                        timeout=10)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "'n2'" in error.details()
    viewer = vm_pb2_grpc.VirtualMachineServiceStub(ca_cluster.secure_channel("viewer"))
    viewer.ListVirtualMachines(vm_pb2.ListVirtualMachinesRequest(), timeout=10)
    error = _refused(lambda: viewer.CreateVirtualMachine(vm_pb2.CreateVirtualMachineRequest(
        virtual_machine=_pending_vm("by-viewer")), timeout=10))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "user 'alice' (viewer)" in error.details()
    admin = vm_pb2_grpc.VirtualMachineServiceStub(ca_cluster.secure_channel("admin"))
    admin.CreateVirtualMachine(vm_pb2.CreateVirtualMachineRequest(virtual_machine=_pending_vm("by-admin")),
                               timeout=10)
    # The controller reaches n1's node agent with its corral-ca certificate (the console path).
    log = ca_cluster.base / "controller-c1.log"
    wait_for(lambda: "node n1 follows its" in log.read_text(), timeout=15, what="n1's assignment stream")
    assert "PERMISSION_DENIED" not in (ca_cluster.base / "handler-n1.log").read_text()


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corral.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_the_cli_with_only_a_client_config(ca_cluster, issued, tmp_path):
    """No --server, no certificate flags, no CORRAL_SERVER or CORRAL_TLS_*: the admin context
    lists and deletes, the viewer context lists and is refused a delete."""
    ca_cluster.create(_pending_vm("in-config"))
    address = next(iter(ca_cluster.controllers.values()))[1]
    env = {k: v for k, v in ca_cluster.env().items() if not k.startswith(("CORRAL_SERVER", "CORRAL_TLS_"))}
    env["HOME"] = str(tmp_path)  # the default file, ~/.config/corral/config
    del env["CORRAL_CLIENT_CONFIG"]
    setup = [
        ["config", "set-cluster", "test", "--server", address, "--ca-file", str(issued["ca"].cert)],
        ["config", "set-credentials", "root", "--cert-file", str(issued["admin"].cert),
         "--key-file", str(issued["admin"].key)],
        ["config", "set-credentials", "alice", "--cert-file", str(issued["viewer"].cert),
         "--key-file", str(issued["viewer"].key)],
        ["config", "set-context", "admin", "--cluster", "test", "--user", "root"],
        ["config", "set-context", "viewer", "--cluster", "test", "--user", "alice"],
        ["config", "use-context", "admin"]]
    for args in setup:
        done = _cli(args, env)
        assert done.returncode == 0, (args, done.stderr)
    assert (tmp_path / ".config" / "corral" / "config").stat().st_mode & 0o077 == 0

    listed = _cli(["get", "vms", "-o", "name"], env)
    assert listed.returncode == 0, listed.stderr
    assert "virtualmachine/in-config" in listed.stdout.split()
    as_viewer = _cli(["--context", "viewer", "get", "vms", "-o", "name"], env)
    assert as_viewer.returncode == 0 and "virtualmachine/in-config" in as_viewer.stdout.split(), as_viewer.stderr
    refused = _cli(["--context", "viewer", "delete", "vm", "in-config"], env)
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr, refused.stderr
    assert _cli(["config", "use-context", "viewer"], env).returncode == 0
    refused = _cli(["delete", "vm", "in-config"], env)
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr, refused.stderr
    deleted = _cli(["--context", "admin", "delete", "vm", "in-config"], env)
    assert deleted.returncode == 0, deleted.stderr
    # A flag still wins: the admin's certificate from the command line, in the viewer context.
    flagged = _cli(["--cert-file", str(issued["admin"].cert), "--key-file", str(issued["admin"].key),
                    "delete", "vm", "by-admin"], env)
    assert flagged.returncode == 0 or "NOT_FOUND" in flagged.stderr, flagged.stderr
    assert "PERMISSION_DENIED" not in flagged.stderr
