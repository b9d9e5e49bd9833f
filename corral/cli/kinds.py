"""The resource types the CLI knows, their names and aliases, and how command arguments
(``TYPE NAME...``, ``TYPE/NAME...`` as ``get -o name`` prints, ``-l SELECTOR``, ``--all``) become
the objects a command acts on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import click

from corral import printing, printing_fleet, printing_snapshots
from corral.client import Client

VM = "virtualmachine"
NODE = "node"
MIGRATION = "migration"
POOL = "virtualmachinepool"
INSTANCE_TYPE = "instancetype"
PREFERENCE = "preference"
SNAPSHOT = "virtualmachinesnapshot"


@dataclass(frozen=True)
class ResourceKind:
    """One type of object as the CLI sees it."""

    key: str  # "virtualmachinepool": what `get -o name` prints before the slash
    kind: str  # "VirtualMachinePool": the API's and the manifests' kind
    aliases: tuple[str, ...]
    table: Callable[..., str]  # (items, wide=, now=) -> the `get` table
    describe: Callable[..., str]  # (item, now=) -> the `describe` block
    deletable: bool = False
    editable: bool = False  # apply and edit: the API has Create and Update

    @property
    def plural(self) -> str:
        return self.aliases[0]


def _no_wide(table: Callable[..., str]) -> Callable[..., str]:
    return lambda items, *, wide=False, now=None: table(items, now=now)


KINDS: tuple[ResourceKind, ...] = (
    ResourceKind(VM, "VirtualMachine", ("vms", "vm", "virtualmachine", "virtualmachines"),
                 printing.vm_table, printing.describe_vm, deletable=True, editable=True),
    ResourceKind(NODE, "Node", ("nodes", "node"), printing.node_table, printing.describe_node),
    ResourceKind(MIGRATION, "Migration", ("migrations", "migration", "mig", "vmim"),
                 _no_wide(printing.migration_table), printing.describe_migration),
    ResourceKind(POOL, "VirtualMachinePool",
                 ("pools", "pool", "vmpool", "vmpools", "virtualmachinepool", "virtualmachinepools"),
                 printing_fleet.pool_table, printing_fleet.describe_pool, deletable=True, editable=True),
    ResourceKind(INSTANCE_TYPE, "InstanceType", ("instancetypes", "instancetype", "it", "its"),
                 printing_fleet.instance_type_table, printing_fleet.describe_spec_object,
                 deletable=True, editable=True),
    ResourceKind(PREFERENCE, "Preference", ("preferences", "preference", "pref", "prefs"),
                 printing_fleet.preference_table, printing_fleet.describe_spec_object,
                 deletable=True, editable=True),
    ResourceKind(SNAPSHOT, "VirtualMachineSnapshot", ("snapshots", "snapshot", "vmsnapshot", "vmsnapshots",
                                                      "virtualmachinesnapshot", "virtualmachinesnapshots"),
                 printing_snapshots.snapshot_table, printing_snapshots.describe_snapshot, deletable=True),
)
BY_KEY = {k.key: k for k in KINDS}
BY_KIND = {k.kind: k for k in KINDS}
_ALIASES = {alias: k for k in KINDS for alias in (k.key, *k.aliases)}


def kind_named(text: str) -> ResourceKind:
    """"pools", "vm", "it" -> its ResourceKind; a usage error naming the known types otherwise."""
    kind = _ALIASES.get(text.lower())
    if kind is None:
        known = ", ".join(k.plural for k in KINDS)
        raise click.UsageError(f"unknown resource type {text!r} (one of: {known})")
    return kind


def is_type_word(text: str) -> bool:
    """Whether ``text`` names a type ("vms", "pool") rather than an object."""
    return text.lower() in _ALIASES


def kind_of(obj: Any) -> ResourceKind:
    """The ResourceKind of a message (by its proto name)."""
    return BY_KIND[obj.DESCRIPTOR.name]


def split_name(arg: str) -> tuple[ResourceKind | None, str]:
    """"vm/a" -> (VM, "a"); a bare "a" -> (None, "a")."""
    if "/" not in arg:
        return None, arg
    text, name = arg.split("/", 1)
    if not name:
        raise click.UsageError(f"missing name in {arg!r}")
    return kind_named(text), name


def resource_args(first: str, names: Sequence[str]) -> tuple[ResourceKind, list[str]]:
    """What kubectl accepts: ``TYPE NAME...`` or ``TYPE/NAME...`` (what ``-o name`` prints),
    mixed as long as every name is of one type: ("vms", ["a", "vm/b"]) -> (VM, ["a", "b"])."""
    kind, name = split_name(first)
    found = [name] if kind is not None else []
    if kind is None:
        kind = kind_named(first)
    for arg in names:
        other, name = split_name(arg)
        if other is not None and other is not kind:
            raise click.UsageError(f"{arg!r} is a {other.key}, but this command was given {kind.plural}: "
                                   "name one type at a time")
        found.append(name)
    return kind, found


def resource_groups(first: str, names: Sequence[str]) -> list[tuple[ResourceKind, list[str]]]:
    """Like resource_args, but TYPE/NAME arguments may name several types (kubectl's
    ``delete vm/a pool/b``): [(kind, names)] in the order the types first appear. A bare name
    belongs to the type before it."""
    groups: dict[str, tuple[ResourceKind, list[str]]] = {}
    kind, name = split_name(first)
    if kind is None:
        kind = kind_named(first)
        groups[kind.key] = (kind, [])
    else:
        groups[kind.key] = (kind, [name])
    for arg in names:
        other, name = split_name(arg)
        kind = other or kind
        groups.setdefault(kind.key, (kind, []))[1].append(name)
    return list(groups.values())


def names_of(key: str, args: Sequence[str]) -> list[str]:
    """Names for commands that take one type (verbs: VMs; cordon: nodes), bare or TYPE/NAME."""
    kind = BY_KEY[key]
    found = []
    for arg in args:
        other, name = split_name(arg)
        if other is not None and other is not kind:
            raise click.UsageError(f"{arg!r} is a {other.key}: this command takes {kind.plural}")
        found.append(name)
    return found


def selected_names(client: Client, kind: ResourceKind, names: Sequence[str], selector: str,
                   every: bool, *, command: str) -> list[str]:
    """The names a command acts on: those given, or (-l / --all) those the server lists now.
    Names together with -l/--all, or nothing at all, is a usage error (nothing is done)."""
    if names and (selector or every):
        raise click.UsageError("names cannot be combined with -l/--selector or --all")
    if selector and every:
        raise click.UsageError("-l/--selector and --all cannot be combined")
    if names:
        return list(names)
    if not (selector or every):
        raise click.UsageError(f"a name, -l SELECTOR or --all is required: corral {command} {kind.key} NAME")
    return [obj.metadata.name for obj in client.list_objects(kind.kind, label_selector=selector)]


def fetch(client: Client, kind: ResourceKind, names: Sequence[str], selector: str) -> list[Any]:
    """The objects named, or every one matching the selector."""
    if names:
        return [client.get_object(kind.kind, name) for name in names]
    return client.list_objects(kind.kind, label_selector=selector)

