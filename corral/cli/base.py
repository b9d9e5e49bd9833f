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
        obj["client"] = Client(obj["servers"], timeout=obj["request_timeout"],
                               credentials=obj.get("credentials"))
        ctx.find_root().call_on_close(obj["client"].close)
    return obj["client"]


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
@click.option("--server", "-s", envvar=ENV_SERVER, default=DEFAULT_SERVER, show_default=True,
              metavar="HOST:PORT[,HOST:PORT]",
              help=f"Controller address(es), tried in turn (env {ENV_SERVER}).")
@click.option("--request-timeout", type=Duration(), default=10.0, show_default=True,
              help="Deadline of each API call, in seconds (or 30s, 1m).")
@click.option("--ca-file", envvar=ENV_TLS_CA_FILE, metavar="PEM",
              help=f"Use TLS, trusting this CA for the controllers (env {ENV_TLS_CA_FILE}).")
@click.option("--cert-file", envvar=ENV_TLS_CERT_FILE, metavar="PEM",
              help=f"Client certificate for mutual TLS (env {ENV_TLS_CERT_FILE}).")
@click.option("--key-file", envvar=ENV_TLS_KEY_FILE, metavar="PEM",
              help=f"Key of --cert-file (env {ENV_TLS_KEY_FILE}).")
@click.pass_context
def cli(ctx: click.Context, server: str, request_timeout: float, ca_file: str | None,
        cert_file: str | None, key_file: str | None) -> None:
    """Run virtual machines on Corral nodes."""
    try:
        servers = parse_servers(server)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--server") from None
    try:
        credentials = tls_credentials(ca_file, cert_file, key_file)
    except TLSConfigError as err:
        raise CommandError(str(err)) from None
    ctx.obj = {"servers": servers, "request_timeout": request_timeout, "client": None,
               "credentials": credentials}
