"""The CLI's client config file: where the controllers are and which certificate to present,
so a user does not pass --server, --ca-file, --cert-file and --key-file on every command.

Kubeconfig's shape (clusters, users, contexts, current-context), YAML:

    current-context: prod
    clusters:
    - name: prod
      cluster: {server: "10.0.0.5:7100,10.0.0.6:7100", certificate-authority: /etc/corral/pki/ca.pem}
    users:
    - name: alice
      user: {client-certificate: alice.pem, client-key: alice-key.pem}
    contexts:
    - name: prod
      context: {cluster: prod, user: alice}

The file is --client-config FILE, else $CORRAL_CLIENT_CONFIG, else
$XDG_CONFIG_HOME/corral/config (~/.config/corral/config). (CORRAL_CONFIG is the daemons'
settings file: one exported variable must not point a daemon and the CLI at the same file.)
A missing file is an empty config. Relative paths in it are relative to the file. Each value
is taken, highest first, from a flag, the environment (CORRAL_SERVER, CORRAL_TLS_*), the
context (--context NAME, else current-context), the default. The file holds key paths, so it
is written 0600, atomically.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from corral.client import DEFAULT_SERVER, ENV_SERVER, ENV_TLS_CA_FILE, ENV_TLS_CERT_FILE, ENV_TLS_KEY_FILE

ENV_CLIENT_CONFIG = "CORRAL_CLIENT_CONFIG"


class ClientConfigError(Exception):
    """The config file cannot be read, parsed or used as asked (names the file)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Cluster(_Model):
    server: str = Field(..., description="HOST:PORT[,HOST:PORT...] of the controllers")
    certificate_authority: str | None = Field(None, alias="certificate-authority")


class User(_Model):
    client_certificate: str | None = Field(None, alias="client-certificate")
    client_key: str | None = Field(None, alias="client-key")


class Context(_Model):
    cluster: str
    user: str | None = None


class NamedCluster(_Model):
    name: str
    cluster: Cluster


class NamedUser(_Model):
    name: str
    user: User


class NamedContext(_Model):
    name: str
    context: Context


N = TypeVar("N", NamedCluster, NamedUser, NamedContext)


class ClientConfig(_Model):
    api_version: str = Field("corral/v1", alias="apiVersion")
    kind: str = "Config"
    current_context: str = Field("", alias="current-context")
    clusters: list[NamedCluster] = []
    users: list[NamedUser] = []
    contexts: list[NamedContext] = []

    @pydantic.model_validator(mode="after")
    def _unique(self) -> "ClientConfig":
        for what, entries in (("cluster", self.clusters), ("user", self.users), ("context", self.contexts)):
            names = [entry.name for entry in entries]
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ValueError(f"{what} {', '.join(duplicates)} is named more than once")
        return self

    @staticmethod
    def find(entries: list[N], name: str) -> N | None:
        return next((entry for entry in entries if entry.name == name), None)

    @staticmethod
    def put(entries: list[N], entry: N) -> None:
        """Replaces the entry of that name, or appends it."""
        for index, existing in enumerate(entries):
            if existing.name == entry.name:
                entries[index] = entry
                return
        entries.append(entry)


def config_path(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The client config file: ``explicit``, else $CORRAL_CLIENT_CONFIG, else the XDG default."""
    env = os.environ if environ is None else environ
    named = explicit or env.get(ENV_CLIENT_CONFIG)
    if named:
        return Path(named).expanduser()
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return Path(base) / "corral" / "config"


def load(path: Path) -> ClientConfig:
    """The config in ``path``; an empty one when the file does not exist (or is empty)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ClientConfig()
    except OSError as err:
        raise ClientConfigError(f"client config {path}: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ClientConfigError(f"client config {path} is not YAML: {err}") from None
    if data is None:
        return ClientConfig()
    if not isinstance(data, dict):
        raise ClientConfigError(f"client config {path}: expected a mapping (clusters, users, contexts)")
    try:
        return ClientConfig.model_validate(data)
    except pydantic.ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(part) for part in e['loc']) or 'file'}: {e['msg']}"
                             for e in err.errors())
        raise ClientConfigError(f"client config {path}: {problems}") from None


def dump(config: ClientConfig) -> str:
    """YAML in kubeconfig's key order and spelling."""
    data = config.model_dump(by_alias=True, exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def save(config: ClientConfig, path: Path) -> None:
    """Writes ``path`` 0600 through a temporary file and a rename (never half-written, never
    readable by others); creates its directory 0700."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(dump(config))
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


@dataclasses.dataclass(frozen=True)
class Connection:
    """What the CLI dials with, each value from its flag, the environment, the context or
    the default."""

    server: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    context: str = ""  # the context used ("" when none)


def _relative_to(path: str | None, config_file: Path) -> str | None:
    if not path:
        return None
    expanded = Path(path).expanduser()
    return str(expanded if expanded.is_absolute() else config_file.parent / expanded)


def from_context(config: ClientConfig, config_file: Path, context_name: str | None) -> dict[str, str | None]:
    """server, ca_file, cert_file, key_file of context ``context_name`` (else the current one;
    {} when neither is set). A context naming what the file does not have is an error."""
    name = context_name or config.current_context
    if not name:
        return {}
    context = config.find(config.contexts, name)
    if context is None:
        known = ", ".join(entry.name for entry in config.contexts) or "none"
        raise ClientConfigError(f"context {name!r} is not in client config {config_file} (contexts: {known})")
    cluster = config.find(config.clusters, context.context.cluster)
    if cluster is None:
        raise ClientConfigError(f"context {name!r} names cluster {context.context.cluster!r}, which client "
                                f"config {config_file} does not have")
    values: dict[str, str | None] = {
        "server": cluster.cluster.server,
        "ca_file": _relative_to(cluster.cluster.certificate_authority, config_file)}
    if context.context.user:
        user = config.find(config.users, context.context.user)
        if user is None:
            raise ClientConfigError(f"context {name!r} names user {context.context.user!r}, which client "
                                    f"config {config_file} does not have")
        values["cert_file"] = _relative_to(user.user.client_certificate, config_file)
        values["key_file"] = _relative_to(user.user.client_key, config_file)
    values["context"] = name
    return values


_ENV = {"server": ENV_SERVER, "ca_file": ENV_TLS_CA_FILE, "cert_file": ENV_TLS_CERT_FILE,
        "key_file": ENV_TLS_KEY_FILE}


def resolve(flags: Mapping[str, Any], *, config_file: str | None = None, context: str | None = None,
            environ: Mapping[str, str] | None = None) -> Connection:
    """The connection from ``flags`` (server, ca_file, cert_file, key_file; None = not given),
    then the environment, then the config file's context, then the default server."""
    env = os.environ if environ is None else environ
    path = config_path(config_file, env)
    from_file = from_context(load(path), path, context)
    values: dict[str, Any] = {}
    for key, variable in _ENV.items():
        values[key] = flags.get(key) or env.get(variable) or from_file.get(key)
    values["server"] = values["server"] or DEFAULT_SERVER
    return Connection(**values, context=str(from_file.get("context") or ""))
