"""QEMU's own TLS for the migration stream, the launcher's half (``migration_stream: tls``).

The run's session libvirtd reads ``migrate_tls_x509_cert_dir`` from its qemu.conf
(DIR/.config/libvirt/qemu.conf, written before the daemon starts) and hands that directory to
QEMU's tls-creds-x509 object when a migration with VIR_MIGRATE_TLS begins; with
``migrate_tls_x509_verify`` each side also demands the other's certificate. The files are the
one-off credentials of one migration (handler/migration_creds.py): the target writes the
server pair in PrepareIncoming, the source the client pair in MigrateDomain. This launcher
runs as the VM's user and writes them into its own directory (0700 directory, 0600 files,
never through a link), replacing whatever an earlier migration left."""
from __future__ import annotations

import os

from corral.v1 import launcher_pb2

#: Below the VM directory; the session daemon's qemu.conf names it.
TLS_DIR = "migration-tls"
#: What the target's certificate is checked against (handler/migration_creds.TLS_NAME).
TLS_NAME = "migration.corral"


def qemu_conf(vm_dir: str) -> str:
    return (f'migrate_tls_x509_cert_dir = "{os.path.join(vm_dir, TLS_DIR)}"\n'
            "migrate_tls_x509_verify = 1\n")


def write_qemu_conf(vm_dir: str) -> None:
    """The session daemon's qemu.conf (read when it starts; libvirtd refuses to start when the
    directory it names does not exist, so that is made too)."""
    os.makedirs(os.path.join(vm_dir, TLS_DIR), mode=0o700, exist_ok=True)
    conf_dir = os.path.join(vm_dir, ".config", "libvirt")
    os.makedirs(conf_dir, mode=0o700, exist_ok=True)
    _write(os.path.join(conf_dir, "qemu.conf"), qemu_conf(vm_dir), 0o644)


def write_files(vm_dir: str, files: launcher_pb2.MigrationTLSFiles, *, server: bool) -> None:
    """QEMU's file names: ca-cert.pem, and server-* (target) or client-* (source)."""
    directory = os.path.join(vm_dir, TLS_DIR)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    role = "server" if server else "client"
    _write(os.path.join(directory, "ca-cert.pem"), files.ca_pem, 0o600)
    _write(os.path.join(directory, f"{role}-cert.pem"), files.cert_pem, 0o600)
    _write(os.path.join(directory, f"{role}-key.pem"), files.key_pem, 0o600)


def _write(path: str, text: str, mode: int) -> None:
    tmp = f"{path}.tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
