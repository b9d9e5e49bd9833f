"""Settings shared by every Corral daemon: one pydantic model per daemon, validated at start.
Sources, highest precedence first: command-line flags, the environment (CORRAL_*), a settings
file (YAML or TOML: --config FILE, CORRAL_CONFIG, or /etc/corral/<daemon>.yaml when present),
the defaults. `load_settings` builds one and turns every problem into a SettingsError that
names the bad key and where its value came from."""
from __future__ import annotations

import argparse

import contextvars
import difflib
import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from corral import fence_guard
from corral.tls import file_problem


def loopback(address: str) -> bool:
    """HOST:PORT on this machine only (127.0.0.0/8, ::1, localhost): plaintext there reaches no one else."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plaintext_problem(what: str, address: str, how: str) -> str:
    return (f"{what} {address} would serve plaintext to the network (no identity, no encryption): "
            f"{how}, listen on a loopback address, or pass --insecure (CORRAL_INSECURE=true) on a network "
            f"you trust entirely")


def _file_problems(settings: object, fields: dict[str, str]) -> list[str]:
    """Each set file setting that names a missing or unreadable file, as a message."""
    problems = []
    for name, what in fields.items():
        path = getattr(settings, name)
        if path:
            problem = file_problem(path, what)
            if problem:
                problems.append(f"{name}: {problem}")
    return problems


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class CommonSettings(BaseSettings):
    """What every daemon needs: where etcd is and where Corral's keys live in it."""

    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="forbid")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        # Flags (passed as init arguments) > environment > settings file > defaults.
        return init_settings, env_settings, _FileSource(settings_cls)

    etcd_endpoints: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:2379"],
        description="etcd client URLs, comma-separated in the environment",
    )
    etcd_prefix: str = Field("/corral/", description="key prefix of all Corral state")
    etcd_timeout_seconds: float = Field(5.0, gt=0)
    log_level: str = "INFO"
    metrics_listen: str = Field("", description="HOST:PORT serving Prometheus /metrics; empty: off")
    etcd_ca_file: str | None = Field(None, description="CA bundle that signs etcd's server certificates "
                                     "(https endpoints; unset: the system's roots)")
    etcd_cert_file: str | None = Field(None, description="client certificate for etcd (its --client-cert-auth)")
    etcd_key_file: str | None = Field(None, description="key of etcd_cert_file")
    etcd_username: str = Field("", description="etcd user (etcd auth); empty: none")
    etcd_password: SecretStr | None = Field(None, description="its password; prefer etcd_password_file")
    etcd_password_file: str | None = Field(None, description="file holding the etcd password (one line)")

    @model_validator(mode="after")
    def _etcd_security(self) -> "CommonSettings":
        problems = _file_problems(self, {"etcd_ca_file": "etcd CA file", "etcd_cert_file": "etcd client certificate",
                                         "etcd_key_file": "etcd client key", "etcd_password_file": "etcd password file"})
        if bool(self.etcd_cert_file) != bool(self.etcd_key_file):
            problems.append("etcd_cert_file and etcd_key_file go together: set both or neither")
        if (self.etcd_ca_file or self.etcd_cert_file) and not any(
                url.startswith("https://") for url in self.etcd_endpoints):
            problems.append("etcd TLS files are set but no etcd endpoint is https://")
        if self.etcd_password is not None and self.etcd_password_file:
            problems.append("set etcd_password or etcd_password_file, not both")
        has_password = self.etcd_password is not None or bool(self.etcd_password_file)
        if has_password != bool(self.etcd_username):
            problems.append("etcd_username and a password (etcd_password_file or etcd_password) go together")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def etcd_password_value(self) -> str | None:
        """The etcd password (read from etcd_password_file when that is set), or None."""
        if self.etcd_password_file:
            with open(self.etcd_password_file) as handle:
                return handle.readline().rstrip("\r\n")
        return self.etcd_password.get_secret_value() if self.etcd_password is not None else None

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_address(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if value and (not sep or not port.isdigit() or not 0 < int(port) < 65536):
            raise ValueError(f"metrics_listen {value!r} is not of the form HOST:PORT (or empty: off)")
        return value

    @field_validator("etcd_endpoints", mode="before")
    @classmethod
    def _endpoints_list(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("etcd_endpoints")
    @classmethod
    def _endpoints_are_urls(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one etcd endpoint is needed")
        for url in value:
            parts = urlsplit(url if "://" in url else f"http://{url}")
            if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
                raise ValueError(f"etcd endpoint {url!r} is not of the form http://HOST:PORT")
        return value

    @field_validator("etcd_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if not value.startswith("/") or not value.endswith("/"):
            raise ValueError("etcd_prefix must start and end with '/', e.g. /corral/")
        return value


class ControllerSettings(CommonSettings):
    """corral-controller: the API server and, on the elected leader, the reconcilers."""

    listen: str = Field("127.0.0.1:7100", description="HOST:PORT the gRPC API listens on")
    replica_id: str = Field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")
    leader_lease_seconds: int = Field(3, ge=2, le=60)
    resync_seconds: float = Field(1.0, gt=0)
    leader_sheds_node_streams: bool = Field(
        True, description="while leading, turn away node assignment streams whose handler can use another "
                          "replica (it comes back when none answers): the leader's CPU goes to its reconcilers, "
                          "and its failure cuts no node's stream")
    node_loss_margin_seconds: float = Field(
        5.0, ge=4.0,
        description="how long a node stays NotReady before its runs count as over (its handler "
                    "fences its guests before its lease can expire; this covers the store-outage grace)")
    tls_cert_file: str | None = Field(None, description="the API's server certificate (with tls_key_file "
                                      "and tls_client_ca_file: mutual TLS); unset: plaintext")
    tls_key_file: str | None = Field(None, description="key of tls_cert_file")
    tls_client_ca_file: str | None = Field(None, description="CA that signs client (node and user) certificates")
    insecure: bool = Field(False, description="serve plaintext on a non-loopback listen address (refused "
                           "otherwise: anyone who reaches it could act as any node or user)")
    node_stream_limit: int = Field(
        4, ge=1, description="streams one node certificate may hold open on a replica (a handler needs one)")
    user_stream_limit: int = Field(
        64, ge=1, description="watches one user certificate may hold open on a replica")
    # Live migration, with KubeVirt's defaults (a Migration's policy may override the last five).
    parallel_migrations_per_cluster: int = Field(5, ge=1, description="migrations running at once")
    parallel_outbound_migrations_per_node: int = Field(2, ge=1, description="migrations leaving one node at once")
    migration_bandwidth_mib_per_second: int = Field(0, ge=0, description="0: unlimited")
    migration_completion_timeout_per_gib_seconds: int = Field(150, ge=1, description="per GiB of guest memory")
    migration_progress_timeout_seconds: int = Field(150, ge=1, description="abort when no progress this long")
    migration_allow_post_copy: bool = False
    migration_allow_auto_converge: bool = False
    # The web VNC console (controller/web_console.py): off unless given an address.
    web_console_listen: str = Field(
        "", description="HOST:PORT of the web VNC console (HTTPS with tls_cert_file and tls_key_file; "
                        "plaintext only on loopback or with insecure); empty: off")
    web_console_url: str = Field(
        "", description="the console's base URL as browsers reach it (default: https://LISTEN, http:// "
                        "when plaintext), put in the links CreateVncToken returns")
    novnc_dir: str = Field("", description="noVNC's files (the npm package @novnc/novnc); default: "
                                           "the one scripts/install.sh puts in .local/node_modules")

    def plaintext_problems(self) -> list[str]:
        """Why serving as set would expose plaintext to the network (checked at start)."""
        problems = []
        if self.web_console_listen and not (self.tls_cert_file or self.insecure or loopback(self.web_console_listen)):
            problems.append(plaintext_problem("web_console_listen", self.web_console_listen,
                                              "give tls_cert_file and tls_key_file"))
        if self.tls_cert_file or self.insecure or loopback(self.listen):
            return problems
        return [plaintext_problem("listen", self.listen, "give tls_cert_file, tls_key_file and "
                                  "tls_client_ca_file (mutual TLS)")] + problems

    @field_validator("web_console_listen")
    @classmethod
    def _web_console_address(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if value and (not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536):
            raise ValueError(f"web_console_listen {value!r} is not of the form HOST:PORT (or empty: off)")
        return value

    @field_validator("web_console_url")
    @classmethod
    def _web_console_base(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError(f"web_console_url {value!r} is not an http(s)://HOST[:PORT][/PATH] URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _api_tls(self) -> "ControllerSettings":
        names = ("tls_cert_file", "tls_key_file", "tls_client_ca_file")
        problems = _file_problems(self, {"tls_cert_file": "server certificate", "tls_key_file": "server key",
                                         "tls_client_ca_file": "client CA file"})
        if any(getattr(self, n) for n in names) and not all(getattr(self, n) for n in names):
            problems.append("mutual TLS needs tls_cert_file, tls_key_file and tls_client_ca_file together")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class HandlerSettings(CommonSettings):
    """corral-handler: one per node."""

    node_name: str = Field(default_factory=lambda: os.uname().nodename)
    servers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1:7100"],
        description="controller addresses HOST:PORT, comma-separated in the environment",
    )
    state_dir: str = Field("/var/lib/corral", description="per-VM directories live below it")
    capacity_vcpus: int = Field(0, ge=0, description="0: the host's CPU count")
    capacity_memory_mib: int = Field(0, ge=0, description="0: the host's memory less 1 GiB")
    cpu_allocation_ratio: int = Field(10, ge=1, le=100, description="vCPUs of VMs per host CPU "
                                      "(KubeVirt's cpuAllocationRatio); memory is not overcommitted")
    node_labels: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    heartbeat_seconds: int = Field(10, ge=3, le=120, description="TTL of the node lease; guests are fenced "
                                   "when it cannot be renewed in time")
    emulation: str = Field("auto", description="auto (KVM when /dev/kvm works), on (TCG), off")
    watchdog_device: str = Field("", description="a watchdog device (/dev/watchdog) petted while the node "
                                 "lease is current: resets the node if the handler dies; its timeout is set "
                                 "to heartbeat_seconds")
    fence_guard: str = Field(fence_guard.DEFAULT_PATH, description="library preloaded into every guest's QEMU "
                             "that ends it once the node's fencing deadline passes, even when the handler and "
                             "the launchers are dead (never two copies); 'off' turns it off")
    shutdown_grace_seconds: int = Field(30, ge=0)
    save_dir: str = Field("", description="where `corral save` writes guests' memory: shared storage, so "
                          "that another node can restore them; empty: STATE_DIR/saved")
    launcher_command: str = Field("", description="how to run corral-launcher; default: this Python")
    isolation: str = Field("auto", description="per-VM isolation: each launcher and its QEMU as its own user "
                           "in its own cgroup: on, off, auto (on when the handler runs as root)")
    vm_uid_base: int = Field(200000, ge=1000, le=2**31 - 65536, description="first of the 65536 uids/gids "
                             "given to VMs when isolated (no /etc/passwd entries needed)")
    vm_memory_overhead_mib: int = Field(256, ge=0, description="memory allowed to a VM's cgroup on top of "
                                        "the VM's memory (QEMU and the launcher)")
    image_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["/var/lib/corral/images"],
        description="directories base images of ephemeral disks may be in (after resolving symlinks), "
                    "comma-separated in the environment")
    disk_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["/var/lib/corral/disks"],
        description="directories persistent disks (files or block device nodes) may be in (after "
                    "resolving symlinks), comma-separated in the environment")
    allowed_bridges: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="bridges VMs may join (names or shell patterns such as br-vm*), comma-separated in the "
                    "environment; empty: no bridge networks on this node")
    tls_ca_file: str | None = Field(None, description="CA of the controllers' certificates (TLS to the API)")
    tls_cert_file: str | None = Field(None, description="this node's client certificate (CN node:<node_name>)")
    tls_key_file: str | None = Field(None, description="key of tls_cert_file")
    insecure: bool = Field(False, description="serve plaintext on non-loopback addresses: the NodeAgentService "
                           "without TLS, the migration proxy (refused otherwise)")

    @model_validator(mode="after")
    def _client_tls(self) -> "HandlerSettings":
        problems = _file_problems(self, {"tls_ca_file": "CA file", "tls_cert_file": "node certificate",
                                         "tls_key_file": "node key"})
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            problems.append("tls_cert_file and tls_key_file go together: set both or neither")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def uses_tls(self) -> bool:
        return bool(self.tls_ca_file or self.tls_cert_file)

    def plaintext_problems(self) -> list[str]:
        """Why serving as set would expose plaintext to the network (checked at start)."""
        if self.insecure:
            return []
        problems = []
        if not (self.tls_cert_file and self.tls_ca_file) and not loopback(self.listen):
            problems.append(plaintext_problem("listen", self.listen, "give tls_ca_file, tls_cert_file and "
                                              "tls_key_file (the node agent then serves mutual TLS)"))
        if self.migration_listen and not (self.tls_cert_file and self.tls_ca_file) \
                and not loopback(self.migration_listen):
            problems.append(plaintext_problem("migration_listen", self.migration_listen,
                                              "give tls_ca_file, tls_cert_file and tls_key_file (the migration "
                                              "proxy then serves mutual TLS and carries QEMU's stream), or set "
                                              "it empty (this node takes no incoming migrations)"))
        return problems

    listen: str = Field("0.0.0.0:7101", description="HOST:PORT of the handler's NodeAgentService (consoles, "
                        "pause, reset: controllers dial it); port 0: any free port")
    advertise_address: str = Field("", description="HOST:PORT controllers dial to reach listen (the node "
                                   "record's status.address); empty: listen's, with this host's address "
                                   "when listen is on all addresses")
    migration_listen: str = Field("0.0.0.0:7102", description="HOST:PORT of the live-migration proxy (other "
                                  "nodes' handlers connect to it; advertised with advertise_address's host "
                                  "when on all addresses); port 0: any free port; empty: this node takes no "
                                  "incoming migrations")
    migration_stream: str = Field(
        "tunnelled", description="with TLS files, how QEMU's memory stream crosses: tunnelled (inside the "
        "mutual-TLS proxy; no post-copy), tls (QEMU's own TLS straight between the nodes with one-off "
        "credentials per migration; post-copy works) or plaintext (straight, unencrypted and unauthenticated: "
        "a migration network you trust entirely). libvirt's connection stays in the proxy in all three")

    @field_validator("migration_stream")
    @classmethod
    def _migration_stream(cls, value: str) -> str:
        if value not in ("tunnelled", "tls", "plaintext"):
            raise ValueError(f"migration_stream {value!r} must be tunnelled, tls or plaintext")
        return value
    libvirt_mode: str = Field("embed", description="how launchers run libvirt: embed (qemu:///embed, in the "
                              "launcher) or session (a libvirt daemon per run: needed for live migration)")

    @field_validator("libvirt_mode")
    @classmethod
    def _libvirt_mode(cls, value: str) -> str:
        if value not in ("embed", "session"):
            raise ValueError(f"libvirt_mode {value!r} must be embed or session")
        return value

    @field_validator("listen", "advertise_address", "migration_listen")
    @classmethod
    def _host_port(cls, value: str, info: ValidationInfo) -> str:
        host, sep, port = value.rpartition(":")
        if value and (not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536
                      or (info.field_name == "advertise_address" and int(port) == 0)):
            raise ValueError(f"{info.field_name} {value!r} is not of the form HOST:PORT")
        if not value and info.field_name == "listen":
            raise ValueError("listen must be HOST:PORT")
        return value

    @field_validator("servers", mode="before")
    @classmethod
    def _servers_list(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("image_roots", "disk_roots", "allowed_bridges", mode="before")
    @classmethod
    def _roots_list(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("image_roots", "disk_roots")
    @classmethod
    def _roots_absolute(cls, value: list[str], info: ValidationInfo) -> list[str]:
        for root in value:
            if not root.startswith("/") or root == "/":
                raise ValueError(f"{info.field_name}: {root!r} must be an absolute directory other than /")
        return value

    @field_validator("node_labels", mode="before")
    @classmethod
    def _labels_dict(cls, value: object) -> object:
        if isinstance(value, str):
            labels: dict[str, str] = {}
            for item in _split_list(value):
                key, sep, val = item.partition("=")
                if not sep:
                    raise ValueError(f"node label {item!r} is not KEY=VALUE")
                labels[key.strip()] = val.strip()
            return labels
        return value

    @field_validator("emulation", "isolation")
    @classmethod
    def _auto_on_off(cls, value: str, info: ValidationInfo) -> str:
        if value not in ("auto", "on", "off"):
            raise ValueError(f"{info.field_name} must be auto, on or off")
        return value


# -- the settings file ------------------------------------------------------------------------

class SettingsError(Exception):
    """A setting that cannot be used; the message names the key and where it came from."""


_file_values: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("corral_settings_file", default={})

S = TypeVar("S", bound=CommonSettings)


class _FileSource(PydanticBaseSettingsSource):
    """The values of the settings file `load_settings` read (none outside it)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return _file_values.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_values.get())


def default_config_path(daemon: str) -> Path:
    return Path("/etc/corral") / f"{daemon}.yaml"


def read_settings_file(path: Path, settings_cls: type[BaseSettings]) -> dict[str, Any]:
    """The file's settings as field names to values: YAML (or TOML for *.toml), one mapping of
    setting names (etcd_endpoints or etcd-endpoints) to values. Unknown keys are errors."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SettingsError(f"settings file {path} does not exist") from None
    except OSError as exc:
        raise SettingsError(f"cannot read settings file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"settings file {path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path}: expected a mapping of setting names to values, "
                            f"got {type(data).__name__}")
    known = sorted(settings_cls.model_fields)
    values: dict[str, Any] = {}
    problems = []
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in settings_cls.model_fields:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            problems.append(f"{path}: unknown setting {key!r}{hint}")
        elif name in values:
            problems.append(f"{path}: setting {key!r} is given twice")
        else:
            values[name] = value
    if problems:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems))
    return values


def _origin(name: str, overrides: dict[str, Any], file_values: dict[str, Any], path: Path | None,
            prefix: str) -> str:
    if name in overrides:
        return f"flag --{name.replace('_', '-')}"
    env_name = f"{prefix}{name}".upper()
    if any(key.upper() == env_name for key in os.environ):
        return f"environment {env_name}"
    if name in file_values:
        return f"{path}, key {name!r}"
    return "default"


def load_settings(settings_cls: type[S], overrides: dict[str, Any], *, config: str | None = None,
                  daemon: str) -> S:
    """Settings of one daemon: overrides (its flags) > environment > settings file > defaults.
    The file is `config`, else $CORRAL_CONFIG, else /etc/corral/<daemon>.yaml if it exists;
    a file named explicitly must exist. Raises SettingsError naming every bad value."""
    named = config or os.environ.get("CORRAL_CONFIG") or ""
    path: Path | None = Path(named) if named else None
    if path is None and default_config_path(daemon).exists():
        path = default_config_path(daemon)
    file_values = read_settings_file(path, settings_cls) if path is not None else {}
    token = _file_values.set(file_values)
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        prefix = settings_cls.model_config.get("env_prefix", "")
        lines = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            if not error["loc"]:  # a check across settings: its message names them
                lines.append(message)
                continue
            name = str(error["loc"][0])
            where = _origin(name, overrides, file_values, path, prefix)
            secret = any(word in name for word in ("password", "secret", "token"))
            got = f" (got {error['input']!r})" if "input" in error and where != "default" and not secret else ""
            lines.append(f"{name} (from {where}): {message}{got}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
    finally:
        _file_values.reset(token)


def add_common_arguments(parser: argparse.ArgumentParser, *, daemon: str) -> None:
    """The flags every daemon takes (each overrides its CORRAL_* variable)."""
    parser.add_argument("--etcd-endpoints", help="comma-separated etcd URLs (CORRAL_ETCD_ENDPOINTS)")
    parser.add_argument("--etcd-prefix", help="key prefix (CORRAL_ETCD_PREFIX)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING (CORRAL_LOG_LEVEL)")
    parser.add_argument("--metrics-listen", help="HOST:PORT for Prometheus /metrics (CORRAL_METRICS_LISTEN)")
    parser.add_argument("--config", metavar="FILE",
                        help=f"settings file, YAML or TOML (CORRAL_CONFIG; default /etc/corral/{daemon}.yaml if present)")


def parse_daemon_settings(parser: argparse.ArgumentParser, argv: list[str] | None, settings_cls: type[S], *,
                          daemon: str) -> S:
    """Parse the flags and load the daemon's settings; a bad value exits 2 with its message."""
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k != "config"}
    try:
        return load_settings(settings_cls, overrides, config=args.config, daemon=daemon)
    except SettingsError as exc:
        parser.exit(2, f"corral-{daemon}: {exc}\n")
