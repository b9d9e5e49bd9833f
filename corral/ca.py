"""corral-ca: a cluster CA and the certificates Corral's parts present to each other.

    corral-ca init /etc/corral/pki
    corral-ca issue controller c1 --ca-dir /etc/corral/pki --ip 10.0.0.5 --dns corral.example
    corral-ca issue node n1 --ca-dir /etc/corral/pki --ip 10.0.0.11
    corral-ca issue user alice --ca-dir /etc/corral/pki --role viewer

Why it exists: mutual TLS is only the default if making the certificates is one command, and
only safe if every certificate says exactly what corral/identity.py reads:

- controller: SAN URI ``corral://role/controller``, server and client use (it serves the API and
  dials handlers with the same certificate), SANs for the addresses clients dial;
- node NAME: CN ``node:NAME``, SAN URI ``corral://node/NAME``, SAN DNS ``NAME.node.corral`` (what
  a controller dialing node NAME insists on), server and client use;
- user NAME: CN ``NAME``, SAN URI ``corral://role/admin`` or ``corral://role/viewer``, client use.

Keys are EC P-256, written 0600 and never overwritten without --force. Names are DNS-1123
labels, so a file name made from one (``node-NAME.pem``) cannot leave the directory.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corral.identity import (ADMIN, CONTROLLER, NODE_CN_PREFIX, NODE_URI_PREFIX, ROLE_URI_PREFIX, VIEWER,
                             node_server_name)
from corral.validation import DNS1123_LABEL

CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"
CA_DAYS = 3650  # as kubeadm: ten years for the CA, one for what it signs
LEAF_DAYS = 365
USER_ROLES = (ADMIN, VIEWER)
KINDS = ("controller", "node", "user")
_BACKDATE = datetime.timedelta(minutes=5)  # clocks a little behind still accept a new certificate


class CAError(click.ClickException):
    """A refusal (bad name, existing file, missing CA) reported as ``corral-ca: error: ...``."""

    def show(self, file: object = None) -> None:
        click.echo(f"corral-ca: error: {self.message}", err=True)


def check_name(name: str, what: str) -> str:
    """``name`` if it is a DNS-1123 label (it becomes part of a file name and a SAN)."""
    if not DNS1123_LABEL.match(name):
        raise CAError(f"{what} name {name!r} is not a DNS-1123 label (at most 63 lower-case letters, "
                      f"digits and '-', starting and ending with a letter or digit)")
    return name


def cert_paths(directory: Path, kind: str, name: str) -> tuple[Path, Path]:
    """(certificate, key) file of an issued certificate: DIR/KIND-NAME.pem, DIR/KIND-NAME-key.pem."""
    stem = f"{kind}-{check_name(name, kind)}"
    return directory / f"{stem}.pem", directory / f"{stem}-key.pem"


def _write_new(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Writes ``data`` with ``mode`` from the start (a key is never readable by others, even
    briefly); refuses an existing file unless ``force``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), mode)
    except FileExistsError:
        raise CAError(f"{path} exists: pass --force to replace it") from None
    except OSError as err:
        raise CAError(f"{path}: {err.strerror or err}") from None
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    """Checks every target first, so a refusal leaves no half-written pair behind."""
    existing = [str(path) for path in paths if path.exists() or path.is_symlink()]
    if existing and not force:
        raise CAError(f"{', '.join(existing)} exist{'s' if len(existing) == 1 else ''}: pass --force to replace")


def _write_pair(cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
                force: bool) -> None:
    _refuse_existing((cert_path, key_path), force)
    _write_new(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()), 0o600, force)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         encipher_only=False, decipher_only=False)


def init_ca(directory: Path, *, common_name: str = "corral cluster CA", days: int = CA_DAYS,
            force: bool = False) -> tuple[Path, Path]:
    """Creates DIR (0700 when new) with a self-signed CA: ca.pem and ca-key.pem (0600)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    paths = directory / CA_CERT, directory / CA_KEY
    _write_pair(*paths, cert, key, force)
    return paths


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA in DIR (made by init_ca), or a CAError saying what is missing."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as err:
        raise CAError(f"no CA in {directory} ({err.filename}: {err.strerror}): run corral-ca init {directory}") from None
    except ValueError as err:
        raise CAError(f"the CA in {directory} does not load: {err}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{key_path} is not an EC key")
    return cert, key


def subject_of(kind: str, name: str, role: str | None = None) -> tuple[str, list[str], list[str], list[x509.ObjectIdentifier]]:
    """(CN, SAN URIs, SAN DNS names, extended key usages) that make corral/identity.py read a
    certificate as ``kind`` NAME (and ``role`` for a user)."""
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    if kind == "controller":
        return name, [f"{ROLE_URI_PREFIX}{CONTROLLER}"], [], both
    if kind == "node":
        return f"{NODE_CN_PREFIX}{name}", [f"{NODE_URI_PREFIX}{name}"], [node_server_name(name)], both
    if kind == "user":
        if role not in USER_ROLES:
            raise CAError(f"a user's role is one of {', '.join(USER_ROLES)} (got {role!r})")
        return name, [f"{ROLE_URI_PREFIX}{role}"], [], [ExtendedKeyUsageOID.CLIENT_AUTH]
    raise CAError(f"kind must be one of {', '.join(KINDS)} (got {kind!r})")


def _sans(uris: Sequence[str], dns: Sequence[str], ips: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in uris]
    for host in dns:
        if not host or any(not DNS1123_LABEL.match(part) for part in host.lower().rstrip(".").split(".")):
            raise CAError(f"--dns {host!r} is not a DNS name")
        names.append(x509.DNSName(host.lower().rstrip(".")))
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise CAError(f"--ip {ip!r} is not an IP address") from None
    return names


def issue(ca_dir: Path, kind: str, name: str, *, role: str | None = None, ips: Sequence[str] = (),
          dns: Sequence[str] = (), out_dir: Path | None = None, days: int = LEAF_DAYS,
          force: bool = False) -> tuple[Path, Path]:
    """Signs a new key's certificate for ``kind`` NAME with the CA in ``ca_dir``; writes
    OUT/KIND-NAME.pem and OUT/KIND-NAME-key.pem (OUT defaults to ``ca_dir``)."""
    check_name(name, kind)
    common_name, uris, own_dns, usages = subject_of(kind, name, role)
    if kind == "user" and (ips or dns):
        raise CAError("a user certificate names no addresses (--ip, --dns are for controllers and nodes)")
    ca_cert, ca_key = load_ca(ca_dir)
    target = out_dir or ca_dir
    paths = cert_paths(target, kind, name)
    _refuse_existing(paths, force)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(_sans(uris, [*own_dns, *dns], ips)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_pair(*paths, cert, key, force)
    return paths


# -- the command line ----------------------------------------------------------------------------

_DIR = click.Path(file_okay=False, path_type=Path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """A cluster CA for Corral and the controller, node and user certificates it signs."""


@cli.command()
@click.argument("directory", type=_DIR)
@click.option("--days", type=click.IntRange(1, 36500), default=CA_DAYS, show_default=True)
@click.option("--common-name", default="corral cluster CA", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing CA (every certificate it signed stops working).")
def init(directory: Path, days: int, common_name: str, force: bool) -> None:
    """Create a CA in DIRECTORY: ca.pem (give it to every part) and ca-key.pem (keep it here)."""
    cert, key = init_ca(directory, common_name=common_name, days=days, force=force)
    click.echo(f"CA: {cert} (key {key}, 0600)")


@cli.command(name="issue")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("name")
@click.option("--ca-dir", type=_DIR, envvar="CORRAL_CA_DIR", default="/etc/corral/pki", show_default=True,
              help="Where `corral-ca init` made the CA (env CORRAL_CA_DIR).")
@click.option("--out", "out_dir", type=_DIR, help="Write the certificate and key here (default: --ca-dir).")
@click.option("--role", type=click.Choice(USER_ROLES), help="A user's role (required for users).")
@click.option("--ip", "ips", multiple=True, metavar="ADDRESS", help="An IP SAN (controllers, nodes); repeatable.")
@click.option("--dns", multiple=True, metavar="NAME", help="A DNS SAN (controllers, nodes); repeatable.")
@click.option("--days", type=click.IntRange(1, 36500), default=LEAF_DAYS, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing certificate and key.")
def issue_command(kind: str, name: str, ca_dir: Path, out_dir: Path | None, role: str | None,
                  ips: tuple[str, ...], dns: tuple[str, ...], days: int, force: bool) -> None:
    """Issue a KIND (controller, node, user) certificate for NAME, signed by the CA."""
    if kind == "user" and role is None:
        raise CAError("a user certificate needs --role admin or --role viewer")
    if kind != "user" and role is not None:
        raise CAError("--role is for users (a controller's role is controller; a node has none)")
    cert, key = issue(ca_dir, kind, name, role=role, ips=ips, dns=dns, out_dir=out_dir, days=days, force=force)
    click.echo(f"{kind} {name}: {cert} (key {key}, 0600)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``corral-ca``: returns the exit code (tests call it in-process)."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="corral-ca", standalone_mode=False)
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.Abort:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
