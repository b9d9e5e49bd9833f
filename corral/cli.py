"""corral: the command line for Corral, in the manner of kubectl and virtctl.

    corral create -f examples/vm.yaml
    corral get vms -o wide
    corral wait vm demo --for phase=Running --timeout 120
    corral describe vm demo
    corral delete vm demo --wait

``main(argv)`` returns the exit code instead of exiting, so tests can call it in-process.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import grpc

from corral import manifest, printing
from corral.client import (DEFAULT_SERVER, ENV_SERVER, ENV_TLS_CA_FILE, ENV_TLS_CERT_FILE,
                           ENV_TLS_KEY_FILE, Client, UnexpectedPhase, VirtualMachineGone,
                           WaitTimeout, parse_servers, tls_credentials)
from corral.tls import TLSConfigError
from corral.v1 import vm_pb2

VM = "virtualmachine"
NODE = "node"
MIGRATION = "migration"
_ALIASES = {
    "vm": VM, "vms": VM, "virtualmachine": VM, "virtualmachines": VM,
    "node": NODE, "nodes": NODE,
    "migration": MIGRATION, "migrations": MIGRATION, "mig": MIGRATION, "vmim": MIGRATION,
}
_KINDS = {VM: "VirtualMachine", NODE: "Node", MIGRATION: "Migration"}
OUTPUT_FORMATS = ("wide", "json", "yaml", "name")


class CommandError(click.ClickException):
    """A failure to report as ``error: ...`` with exit code 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _rpc_message(err: grpc.RpcError) -> str:
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    return f"{code.name if code is not None else 'UNKNOWN'}: {details}"


def _kind(text: str) -> str:
    kind = _ALIASES.get(text.lower())
    if kind is None:
        raise click.UsageError(
            f"unknown resource type {text!r} (one of: vm(s), virtualmachine(s), node(s), migration(s))")
    return kind


def _split_name(arg: str) -> tuple[str | None, str]:
    """"vm/a" -> ("virtualmachine", "a"); a bare "a" -> (None, "a")."""
    if "/" not in arg:
        return None, arg
    text, name = arg.split("/", 1)
    if not name:
        raise click.UsageError(f"missing name in {arg!r}")
    return _kind(text), name


def _resource(text: str, names: Sequence[str]) -> tuple[str, list[str]]:
    """What kubectl accepts: ``TYPE NAME...`` or ``TYPE/NAME...`` (what ``-o name`` prints),
    mixed as long as every name is of one type: ("vms", ["a", "vm/b"]) -> ("virtualmachine", ["a", "b"])."""
    kind, first = _split_name(text)
    if kind is None:
        kind, first = _kind(text), None
    found = [first] if first is not None else []
    for arg in names:
        other, name = _split_name(arg)
        if other is not None and other != kind:
            raise click.UsageError(f"{arg!r} is a {other}, but this command was given {kind}s: "
                                   "name one type at a time")
        found.append(name)
    return kind, found


def names_of(kind: str, args: Sequence[str]) -> list[str]:
    """Names for commands that take one type (verbs: VMs; cordon: nodes), bare or TYPE/NAME."""
    found = []
    for arg in args:
        other, name = _split_name(arg)
        if other is not None and other != kind:
            raise click.UsageError(f"{arg!r} is a {other}: this command takes {kind}s")
        found.append(name)
    return found


def _client(ctx: click.Context) -> Client:
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
    name = "DURATION"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return _parse_duration(value)
        except click.BadParameter as err:
            self.fail(err.message, param, ctx)


# --- the group -------------------------------------------------------------------------------


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


# --- create ----------------------------------------------------------------------------------


def _read_source(path: str) -> list[tuple[str, str]]:
    """(source name, text) of a file, of stdin for "-", or of each manifest in a directory."""
    if path == "-":
        return [("<stdin>", sys.stdin.read())]
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir()
                       if f.is_file() and f.suffix in (".yaml", ".yml", ".json"))
        if not files:
            raise CommandError(f"{path}: no .yaml, .yml or .json files in directory")
        return [(str(f), f.read_text()) for f in files]
    try:
        return [(path, p.read_text())]
    except OSError as err:
        raise CommandError(f"{path}: {err.strerror or err}") from None


@cli.command()
@click.option("-f", "--filename", "filenames", multiple=True, required=True, metavar="FILE",
              help="Manifest file, directory, or - for stdin (repeatable).")
@click.pass_context
def create(ctx: click.Context, filenames: tuple[str, ...]) -> int:
    """Create virtual machines from manifests (several YAML documents per file allowed).

    Every manifest is checked before anything is sent: one bad document creates nothing.
    """
    vms: list[tuple[str, vm_pb2.VirtualMachine]] = []
    for filename in filenames:
        for source, text in _read_source(filename):
            try:
                vms.extend((source, vm) for vm in manifest.parse_vms(text, source))
            except manifest.ManifestError as err:
                raise CommandError(str(err)) from None
    try:
        manifest.check_unique_names(vms)
    except manifest.ManifestError as err:
        raise CommandError(str(err)) from None
    client = _client(ctx)
    failed = 0
    for _source, vm in vms:
        try:
            created = client.create_vm(vm)
        except grpc.RpcError as err:
            click.echo(f"error: {_rpc_message(err)}", err=True)
            failed += 1
            continue
        click.echo(f"{VM}/{created.metadata.name or vm.metadata.name} created")
    return 1 if failed else 0


# --- get -------------------------------------------------------------------------------------


def _print_resources(kind: str, items: list[Any], output: str | None, *, single: bool) -> None:
    now = datetime.now(timezone.utc)
    if output == "name":
        for item in items:
            click.echo(f"{kind}/{item.metadata.name}")
        return
    if output in ("json", "yaml"):
        obj = (printing.to_dict(items[0], _KINDS[kind]) if single and len(items) == 1
               else printing.list_dict(items, _KINDS[kind]))
        click.echo(printing.dump_json(obj) if output == "json" else printing.dump_yaml(obj))
        return
    if not items:
        click.echo("No resources found.", err=True)
        return
    wide = output == "wide"
    table = (printing.vm_table(items, wide=wide, now=now) if kind == VM
             else printing.migration_table(items, now=now) if kind == MIGRATION
             else printing.node_table(items, wide=wide, now=now))
    click.echo(table)


def _fetch(client: Client, kind: str, names: list[str], selector: str) -> list[Any]:
    if names:
        get = {VM: client.get_vm, NODE: client.get_node, MIGRATION: client.get_migration}[kind]
        return [get(name) for name in names]
    if kind == VM:
        return client.list_vms(label_selector=selector)
    if kind == MIGRATION:
        return client.list_migrations(label_selector=selector)
    return client.list_nodes(label_selector=selector)


@cli.command()
@click.argument("resource", metavar="TYPE[/NAME]")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("-l", "--selector", default="", metavar="SELECTOR",
              help="Label selector, e.g. app=web,tier!=db.")
@click.option("-o", "--output", type=click.Choice(OUTPUT_FORMATS), default=None,
              help="Output format (default: a table).")
@click.pass_context
def get(ctx: click.Context, resource: str, names: tuple[str, ...], selector: str,
        output: str | None) -> int:
    """List virtual machines, nodes or migrations (vm(s), node(s), migration(s))."""
    kind, name_list = _resource(resource, names)
    if name_list and selector:
        raise click.UsageError("name(s) and --selector cannot be combined")
    items = _fetch(_client(ctx), kind, name_list, selector)
    _print_resources(kind, items, output, single=bool(name_list))
    return 0


# --- describe --------------------------------------------------------------------------------


@cli.command()
@click.argument("resource", metavar="TYPE[/NAME]")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("-l", "--selector", default="", metavar="SELECTOR", help="Label selector.")
@click.pass_context
def describe(ctx: click.Context, resource: str, names: tuple[str, ...], selector: str) -> int:
    """Show a virtual machine or node in detail: spec, status, conditions, phase history."""
    kind, name_list = _resource(resource, names)
    items = _fetch(_client(ctx), kind, name_list, selector)
    if not items:
        click.echo("No resources found.", err=True)
        return 0
    now = datetime.now(timezone.utc)
    describe_one = {VM: printing.describe_vm, NODE: printing.describe_node, MIGRATION: printing.describe_migration}[kind]
    blocks = [describe_one(i, now=now) for i in items]
    click.echo("\n\n".join(blocks))
    return 0


# --- delete ----------------------------------------------------------------------------------


@cli.command()
@click.argument("resource", metavar="TYPE[/NAME]")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--wait/--no-wait", default=False, help="Wait until each VM is gone.")
@click.option("--timeout", type=Duration(), default=120.0, show_default=True,
              help="With --wait: how long to wait, in seconds (or 90s, 2m).")
@click.pass_context
def delete(ctx: click.Context, resource: str, names: tuple[str, ...], wait: bool,
           timeout: float) -> int:
    """Delete virtual machines: their guests are stopped, then they are removed."""
    kind, name_list = _resource(resource, names)
    if kind != VM:
        raise click.UsageError(f"cannot delete {kind}s")
    if not name_list:
        raise click.UsageError("a name is required: corral delete vm NAME")
    client = _client(ctx)
    failed = 0
    pending: list[tuple[str, str]] = []
    for name in name_list:
        try:
            vm = client.delete_vm(name)
        except grpc.RpcError as err:
            click.echo(f"error: {_rpc_message(err)}", err=True)
            failed += 1
            continue
        if wait and vm is not None:
            pending.append((name, vm.metadata.uid))
        else:
            click.echo(f"{VM}/{name} deleted")
    for name, uid in pending:
        try:
            client.wait_for_deletion(name, timeout, uid=uid)
        except WaitTimeout as err:
            click.echo(f"error: {err}", err=True)
            failed += 1
            continue
        click.echo(f"{VM}/{name} deleted")
    return 1 if failed else 0


# --- verbs -----------------------------------------------------------------------------------

#: command -> (API verb, what the command says it did, help)
_VERBS = {
    "start": ("Start", "start requested", "Start stopped virtual machines (Halted becomes Always)."),
    "pause": ("Pause", "paused", "Pause virtual machines' vCPUs."),
    "unpause": ("Unpause", "unpaused", "Let paused virtual machines run again."),
    "soft-reboot": ("SoftReboot", "asked to reboot", "Ask guests to reboot (ACPI); the run stays."),
    "reset": ("Reset", "reset", "Press virtual machines' reset button; the run stays."),
    "save": ("Save", "save requested", "Save guests' memory to the node's save directory and end their runs."),
    "restore": ("Restore", "restore requested", "Resume saved virtual machines (on any node that reads the file)."),
}


#: Verbs whose effect the node reports a moment after the call returns: the printable status
#: to wait for (at most SETTLE_SECONDS) before printing, so that `pause` does not print Running.
_SETTLED = {"Pause": lambda status: status == "Paused", "Unpause": lambda status: status != "Paused"}
SETTLE_SECONDS = 5.0


def _act(ctx: click.Context, verb: str, done: str, names: Sequence[str], **fields: Any) -> int:
    client = _client(ctx)
    failed = 0
    for name in names_of(VM, names):
        try:
            vm = client.act_on_vm(verb, name, **fields)
            settled = _SETTLED.get(verb)
            deadline = time.monotonic() + SETTLE_SECONDS
            while settled and not settled(vm.status.printable_status) and time.monotonic() < deadline:
                time.sleep(0.1)
                vm = client.get_vm(name)
        except grpc.RpcError as err:
            click.echo(f"error: {_rpc_message(err)}", err=True)
            failed += 1
            continue
        click.echo(f"{VM}/{name} {done} ({vm.status.printable_status})")
    return 1 if failed else 0


def _simple_verb(command: str, verb: str, done: str, text: str) -> None:
    @cli.command(command, help=f"{text} Idempotent.")
    @click.argument("names", nargs=-1, required=True, metavar="NAME...")
    @click.pass_context
    def run(ctx: click.Context, names: tuple[str, ...]) -> int:
        return _act(ctx, verb, done, names)


for _command, (_verb, _done, _text) in _VERBS.items():
    _simple_verb(_command, _verb, _done, _text)


def _stop_options(func):
    func = click.option("--force", is_flag=True, help="Destroy the guest at once (no ACPI power-off).")(func)
    return click.option("--grace-period", type=click.IntRange(min=0), default=None, metavar="SECONDS",
                        help="Seconds between the ACPI power-off and destroy (default: the VM's).")(func)


@cli.command()
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@_stop_options
@click.pass_context
def stop(ctx: click.Context, names: tuple[str, ...], grace_period: int | None, force: bool) -> int:
    """Stop virtual machines and keep them stopped (ACPI power-off, then destroy)."""
    fields = {"force": force, **({"grace_period_seconds": grace_period} if grace_period is not None else {})}
    return _act(ctx, "Stop", "stop requested", names, **fields)


@cli.command()
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@_stop_options
@click.pass_context
def restart(ctx: click.Context, names: tuple[str, ...], grace_period: int | None, force: bool) -> int:
    """Stop the current run of virtual machines and start a new one."""
    fields = {"force": force, **({"grace_period_seconds": grace_period} if grace_period is not None else {})}
    return _act(ctx, "Restart", "restart requested", names, **fields)


# --- wait ------------------------------------------------------------------------------------


def _parse_for(condition: str) -> tuple[str, list[int]]:
    """"phase=Running" -> ("phase", [RUNNING]); "phase=Succeeded|Failed"; "delete"."""
    text = condition.strip()
    if text.lower() in ("delete", "deleted"):
        return "delete", []
    key, sep, value = text.partition("=")
    if not sep or key.strip().lower() != "phase" or not value.strip():
        raise click.BadParameter(f"expected phase=PHASE or delete, got {condition!r}",
                                 param_hint="--for")
    try:
        phases = [printing.parse_phase(v) for v in re.split(r"[|,]", value) if v.strip()]
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--for") from None
    return "phase", phases


@cli.command("wait")
@click.argument("resource", metavar="TYPE[/NAME]")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--for", "condition", required=True, metavar="phase=PHASE|delete",
              help="What to wait for: phase=Running (or Running|Succeeded), or delete.")
@click.option("--timeout", type=Duration(), default=120.0, show_default=True,
              help="How long to wait, in seconds (or 90s, 2m).")
@click.pass_context
def wait_cmd(ctx: click.Context, resource: str, names: tuple[str, ...], condition: str,
             timeout: float) -> int:
    """Wait until virtual machines reach a phase (or are deleted).

    Exits 1 on timeout, or when the VM ends Succeeded/Failed without that being waited for.
    """
    kind, name_list = _resource(resource, names)
    if kind != VM:
        raise click.UsageError("only virtual machines can be waited for")
    if not name_list:
        raise click.UsageError("a name is required: corral wait vm NAME --for phase=Running")
    what, phases = _parse_for(condition)
    client = _client(ctx)
    failed = 0
    for name in name_list:
        try:
            if what == "delete":
                client.wait_for_deletion(name, timeout)
            else:
                client.wait_for_phase(name, phases, timeout)
        except (WaitTimeout, UnexpectedPhase, VirtualMachineGone) as err:
            click.echo(f"error: {err}", err=True)
            failed += 1
            continue
        click.echo(f"{VM}/{name} condition met")
    return 1 if failed else 0


# --- console ---------------------------------------------------------------------------------


@cli.command("console")
@click.argument("name")
@click.option("--linger", type=Duration(), default=1.0, show_default=True,
              help="With stdin not a terminal: once it ends, detach after the guest was quiet this long.")
@click.pass_context
def console_cmd(ctx: click.Context, name: str, linger: float) -> int:
    """Attach to a virtual machine's serial console; Ctrl-] detaches.

    On a terminal every key goes to the guest (raw mode); stdin can also be a pipe:
    echo 'uname -a' | corral console demo
    """
    from corral.console import ConsoleSession  # noqa: PLC0415 - termios only when needed
    [name] = names_of(VM, [name])
    return ConsoleSession(_client(ctx), name, linger=linger).run()


# --- entry point -----------------------------------------------------------------------------


from corral import cli_migrations  # noqa: E402,F401  pyflakes: ignore (adds migrate, drain, cordon, uncordon)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI on ``argv`` (default sys.argv[1:]) and returns the exit code."""
    try:
        result = cli.main(args=list(argv) if argv is not None else None, prog_name="corral",
                          standalone_mode=False)
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    except grpc.RpcError as err:
        click.echo(f"error: {_rpc_message(err)}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    from corral.cli import main as package_main  # the module other commands registered on
    sys.exit(package_main())
