"""The VM verbs (start, stop, restart, pause, ...), `corral wait` and `corral scale`.

Verbs take names (bare or vm/NAME, what `get -o name` prints), or -l SELECTOR, or --all.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import click
import grpc

from corral import printing
from corral.cli.base import Duration, cli, client_of, rpc_message
from corral.cli.kinds import BY_KEY, POOL, VM, is_type_word, kind_named, names_of, resource_args, selected_names
from corral.client import UnexpectedPhase, VirtualMachineGone, WaitTimeout

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
_SETTLED: dict[str, Callable[[str], bool]] = {
    "Pause": lambda status: status == "Paused", "Unpause": lambda status: status != "Paused"}
SETTLE_SECONDS = 5.0


def _selection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--all", "every", is_flag=True, help="Every virtual machine.")(func)
    return click.option("-l", "--selector", default="", metavar="SELECTOR",
                        help="Every virtual machine matching this label selector.")(func)


def _vm_names(ctx: click.Context, args: Sequence[str], selector: str, every: bool, command: str) -> list[str]:
    """The VMs a verb acts on. With -l/--all a lone type word ("vms") may name the type."""
    if (selector or every) and len(args) == 1 and is_type_word(args[0]):  # `corral stop vms --all`
        if kind_named(args[0]).key != VM:
            raise click.UsageError(f"{command} acts on virtual machines, not {args[0]}")
        args = ()
    names = names_of(VM, args)
    return selected_names(client_of(ctx), BY_KEY[VM], names, selector, every, command=command)


def _act(ctx: click.Context, verb: str, done: str, names: Sequence[str], **fields: Any) -> int:
    client = client_of(ctx)
    failed = 0
    if not names:
        click.echo("No resources found.", err=True)
    for name in names:
        try:
            vm = client.act_on_vm(verb, name, **fields)
            settled = _SETTLED.get(verb)
            deadline = time.monotonic() + SETTLE_SECONDS
            while settled and not settled(vm.status.printable_status) and time.monotonic() < deadline:
                time.sleep(0.1)
                vm = client.get_vm(name)
        except grpc.RpcError as err:
            click.echo(f"error: {rpc_message(err)}", err=True)
            failed += 1
            continue
        click.echo(f"{VM}/{name} {done} ({vm.status.printable_status})")
    return 1 if failed else 0


def _simple_verb(command: str, verb: str, done: str, text: str) -> None:
    @cli.command(command, help=f"{text} Idempotent.")
    @click.argument("names", nargs=-1, metavar="NAME...")
    @_selection_options
    @click.pass_context
    def run(ctx: click.Context, names: tuple[str, ...], selector: str, every: bool) -> int:
        return _act(ctx, verb, done, _vm_names(ctx, names, selector, every, command))


for _command, (_verb, _done, _text) in _VERBS.items():
    _simple_verb(_command, _verb, _done, _text)


def _stop_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--force", is_flag=True, help="Destroy the guest at once (no ACPI power-off).")(func)
    return click.option("--grace-period", type=click.IntRange(min=0), default=None, metavar="SECONDS",
                        help="Seconds between the ACPI power-off and destroy (default: the VM's).")(func)


def _stop_fields(grace_period: int | None, force: bool) -> dict[str, Any]:
    return {"force": force, **({"grace_period_seconds": grace_period} if grace_period is not None else {})}


@cli.command()
@click.argument("names", nargs=-1, metavar="NAME...")
@_selection_options
@_stop_options
@click.pass_context
def stop(ctx: click.Context, names: tuple[str, ...], selector: str, every: bool, grace_period: int | None,
         force: bool) -> int:
    """Stop virtual machines and keep them stopped (ACPI power-off, then destroy)."""
    targets = _vm_names(ctx, names, selector, every, "stop")
    return _act(ctx, "Stop", "stop requested", targets, **_stop_fields(grace_period, force))


@cli.command()
@click.argument("names", nargs=-1, metavar="NAME...")
@_selection_options
@_stop_options
@click.pass_context
def restart(ctx: click.Context, names: tuple[str, ...], selector: str, every: bool, grace_period: int | None,
            force: bool) -> int:
    """Stop the current run of virtual machines and start a new one."""
    targets = _vm_names(ctx, names, selector, every, "restart")
    return _act(ctx, "Restart", "restart requested", targets, **_stop_fields(grace_period, force))


# --- scale -----------------------------------------------------------------------------------


@cli.command()
@click.argument("resource", metavar="pool[/NAME]")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--replicas", type=click.IntRange(min=0), required=True, help="How many VMs the pool keeps.")
@click.option("-l", "--selector", default="", metavar="SELECTOR", help="Every pool matching it.")
@click.option("--all", "every", is_flag=True, help="Every pool.")
@click.option("--resource-version", type=click.IntRange(min=1), default=None,
              help="Refuse (ABORTED) unless the pool is at this version.")
@click.pass_context
def scale(ctx: click.Context, resource: str, names: tuple[str, ...], replicas: int, selector: str, every: bool,
          resource_version: int | None) -> int:
    """Set how many VMs pools keep: corral scale pool NAME --replicas N."""
    kind, name_list = resource_args(resource, names)
    if kind.key != POOL:
        raise click.UsageError(f"only pools scale, not {kind.plural}")
    if resource_version is not None and (selector or every or len(name_list) != 1):
        raise click.UsageError("--resource-version names the version of one pool: give exactly one name")
    client = client_of(ctx)
    failed = 0
    for name in selected_names(client, kind, name_list, selector, every, command="scale"):
        try:
            client.scale_pool(name, replicas, resource_version=resource_version or 0)
        except grpc.RpcError as err:
            click.echo(f"error: {kind.key}/{name}: {rpc_message(err)}", err=True)
            failed += 1
            continue
        click.echo(f"{kind.key}/{name} scaled")
    return 1 if failed else 0


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
    kind, name_list = resource_args(resource, names)
    if kind.key != VM:
        raise click.UsageError("only virtual machines can be waited for")
    if not name_list:
        raise click.UsageError("a name is required: corral wait vm NAME --for phase=Running")
    what, phases = _parse_for(condition)
    client = client_of(ctx)
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

