"""Per-migration TLS credentials for QEMU's own encrypted stream (``migration_stream: tls``).

QEMU runs as the VM's user, so whatever key it holds is as safe as the least safe guest on
the node: it must never be the node's. For each incoming migration the target handler makes
a throwaway CA, a server certificate for the target's QEMU and a client certificate for the
source's, all valid for a day, the CA's key dropped as soon as both are signed. The target's
launcher gets the server pair (PrepareIncoming); the source handler fetches the client pair
from the target over the mutual-TLS migration proxy (only as the source node of the admitted
migration: the same check as libvirt's connection), and its launcher gets it with
MigrateDomain. Each launcher writes its pair into the run's own directory (it is the VM's
user; root writes nothing there). QEMU on each side trusts only that one CA, so only the two
QEMUs of this migration can complete the handshake, whoever reaches the port."""
from __future__ import annotations

import datetime
import json
import socket
import ssl
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corral.identity import node_server_name

if TYPE_CHECKING:
    from handler.migration_proxy import MigrationTLS

#: The name the target's certificate carries and the source's QEMU checks
#: (VIR_MIGRATE_PARAM_TLS_DESTINATION): trust comes from the one-off CA, not from the name.
TLS_NAME = "migration.corral"
VALID_FOR = datetime.timedelta(days=1)
CLOCK_SKEW = datetime.timedelta(minutes=10)
MAX_BUNDLE = 64 * 1024


@dataclass(frozen=True)
class Pair:
    """What one QEMU needs: the CA to trust, its certificate, its key (PEM text)."""

    ca_pem: str
    cert_pem: str
    key_pem: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Pair":
        """Raises ValueError for anything but the three PEM texts."""
        if len(data) > MAX_BUNDLE:
            raise ValueError("credentials too large")
        obj = json.loads(data.decode())
        pair = cls(ca_pem=obj["ca_pem"], cert_pem=obj["cert_pem"], key_pem=obj["key_pem"])
        for text, marker in ((pair.ca_pem, "CERTIFICATE"), (pair.cert_pem, "CERTIFICATE"), (pair.key_pem, "PRIVATE KEY")):
            if not isinstance(text, str) or f"-----BEGIN {marker}-----" not in text:
                raise ValueError("not PEM credentials")
        return pair


@dataclass(frozen=True)
class MigrationCredentials:
    server: Pair  # for the target's QEMU
    client: Pair  # for the source's QEMU


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name, common_name: str,
          purpose: x509.ObjectIdentifier, now: datetime.datetime) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + VALID_FOR)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               # QEMU checks these: digital signature and key encipherment for a leaf.
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=False)
               .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(TLS_NAME)]), critical=False))
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)


def issue(migration_name: str) -> MigrationCredentials:
    """A one-off CA and the two pairs it signs (the CA's key is not kept)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"corral migration {migration_name}"[:64])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + VALID_FOR)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    server = _leaf(ca_key, ca_name, TLS_NAME, ExtendedKeyUsageOID.SERVER_AUTH, now)
    client = _leaf(ca_key, ca_name, "corral migration source", ExtendedKeyUsageOID.CLIENT_AUTH, now)
    return MigrationCredentials(server=Pair(ca_pem, *server), client=Pair(ca_pem, *client))


def fetch_client_pair(target_address: str, target_node: str, instance_uid: str, tls: "MigrationTLS") -> Pair:
    """The source's half, from the target's proxy over mutual TLS (the target's certificate must
    name ``target_node``; the target gives it only to the source node of the admitted
    migration). Raises OSError or ValueError."""
    from handler.migration_proxy import CONNECT_TIMEOUT_SECONDS, CREDENTIALS_REQUEST, HEADER, split_host_port
    host, port = split_host_port(target_address)
    raw = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        conn = tls.client.wrap_socket(raw, server_hostname=node_server_name(target_node))
    except BaseException:
        raw.close()
        raise
    with conn:
        conn.sendall(HEADER + f"{CREDENTIALS_REQUEST}{instance_uid}\n".encode())
        data = b""
        while len(data) <= MAX_BUNDLE:
            try:
                chunk = conn.recv(16384)
            except ssl.SSLEOFError:  # the target closes without a TLS close_notify
                break
            if not chunk:
                break
            data += chunk
    if not data:
        raise OSError(f"node {target_node} gave no TLS files for run {instance_uid} (refused: see its log)")
    return Pair.from_json(data)
