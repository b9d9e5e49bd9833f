"""The `corral` command group, its global options, and what every command module shares:
errors, durations, the client of the invocation, reading manifest sources."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import click
import grpc

from corral.client import (DEFAULT_SERVER, ENV_SERVER, ENV_TLS_CA_FILE, ENV_TLS_CERT_FILE, ENV_TLS_KEY_FILE,
                           Client, parse_servers, tls_credentials)
from corral.client_config import ENV_CLIENT_CONFIG, ClientConfigError, resolve
from corral.tls import TLSConfigError

OUTPUT_FORMATS = ("wide", "json", "yaml", "name")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class CommandError(click.ClickException):
    """A failure to report as ``error: ...`` with exit code 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def rpc_message(err: grpc.RpcError) -> str:
    """"NOT_FOUND: virtualmachine "x" not found": the code's name, then the server's words."""
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    return f"{code.name if code is not None else 'UNKNOWN'}: {details}"


def rpc_code(err: grpc.RpcError) -> grpc.StatusCode | None:
    return err.code() if hasattr(err, "code") else None


def client_of(ctx: click.Context) -> Client:
    """The invocation's client, made on first use and closed when the command ends."""
    obj = ctx.find_root().obj
    if obj.get("client") is None:
        servers, credentials = _connection(obj)
        obj["client"] = Client(servers, timeout=obj["request_timeout"], credentials=credentials)
        ctx.find_root().call_on_close(obj["client"].close)
    return obj["client"]


def _connection(obj: dict[str, Any]) -> tuple[list[str], grpc.ChannelCredentials | None]:
    """Servers and TLS credentials from the flags, the environment and the client config,
    resolved only when a command calls the API (``corral config`` works with a broken one)."""
    try:
        connection = resolve(obj["flags"], config_file=obj["client_config"], context=obj["context"])
    except ClientConfigError as err:
        raise CommandError(str(err)) from None
    try:
        servers = parse_servers(connection.server)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--server") from None
    try:
        credentials = tls_credentials(connection.ca_file, connection.cert_file, connection.key_file)
    except TLSConfigError as err:
        where = f" (context {connection.context!r})" if connection.context else ""
        raise CommandError(f"{err}{where}") from None
    return servers, credentials


def _parse_duration(text: str) -> float:
    """"120", "120s", "2m", "1h30m", "1.5s" -> seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise click.BadParameter(f"invalid duration {text!r} (e.g. 120, 90s, 2m)")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


class Duration(click.ParamType):
    """Seconds, or 90s, 2m, 1h30m."""

    name = "DURATION"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return _parse_duration(value)
        except click.BadParameter as err:
            self.fail(err.message, param, ctx)


def read_source(path: str) -> list[tuple[str, str]]:
    """(source name, text) of a file, of stdin for "-", or of each manifest in a directory
    (*.yaml, *.yml, *.json, sorted by name, not recursive)."""
    if path == "-":
        return [("<stdin>", sys.stdin.read())]
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in MANIFEST_SUFFIXES)
        if not files:
            raise CommandError(f"{path}: no .yaml, .yml or .json files in directory")
        return [(str(f), f.read_text()) for f in files]
    try:
        return [(path, p.read_text())]
    except OSError as err:
        raise CommandError(f"{path}: {err.strerror or err}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", "-s", metavar="HOST:PORT[,HOST:PORT]",
              help=f"Controller address(es), tried in turn (env {ENV_SERVER}; else the context's; "
                   f"else {DEFAULT_SERVER}).")
@click.option("--request-timeout", type=Duration(), default=10.0, show_default=True,
              help="Deadline of each API call, in seconds (or 30s, 1m).")
@click.option("--ca-file", metavar="PEM",
              help=f"Use TLS, trusting this CA for the controllers (env {ENV_TLS_CA_FILE}; else the context's).")
@click.option("--cert-file", metavar="PEM",
              help=f"Client certificate for mutual TLS (env {ENV_TLS_CERT_FILE}; else the context's).")
@click.option("--key-file", metavar="PEM",
              help=f"Key of --cert-file (env {ENV_TLS_KEY_FILE}; else the context's).")
@click.option("--context", metavar="NAME", help="Use this context of the client config, not its current one.")
@click.option("--client-config", metavar="FILE",
              help=f"Client config file (env {ENV_CLIENT_CONFIG}; default ~/.config/corral/config).")
@click.pass_context
def cli(ctx: click.Context, server: str | None, request_timeout: float, ca_file: str | None,
        cert_file: str | None, key_file: str | None, context: str | None, client_config: str | None) -> None:
    """Run virtual machines on Corral nodes."""
    ctx.obj = {"flags": {"server": server, "ca_file": ca_file, "cert_file": cert_file, "key_file": key_file},
               "context": context, "client_config": client_config, "request_timeout": request_timeout,
               "client": None}
