"""Manifests: YAML (or JSON) documents describing Corral resources, as kubectl reads them.

Pure functions: text in, protobuf messages out, a ManifestError naming the source and the
field on anything wrong. Nothing here talks to a server.

    apiVersion: corral.dev/v1
    kind: VirtualMachine
    metadata: {name: demo, labels: {app: demo}}
    spec:
      vcpus: 1
      memoryMib: 128
      boot: {kernel: {kernelPath: /var/lib/corral/guest/vmlinuz}}

Field names are accepted in camelCase (as printed by ``-o yaml``) or snake_case.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from google.protobuf import descriptor as _descriptor
from google.protobuf import json_format

from corral.v1 import vm_pb2

API_VERSION = "corral.dev/v1"
VM_KIND = "VirtualMachine"

_TOP_LEVEL_FIELDS = ("apiVersion", "kind", "metadata", "spec")
# Metadata the server sets; a manifest may not carry it (both spellings).
_SERVER_METADATA = {
    "uid": "uid",
    "resourceVersion": "resourceVersion",
    "resource_version": "resourceVersion",
    "createTime": "createTime",
    "create_time": "createTime",
    "deleteTime": "deleteTime",
    "delete_time": "deleteTime",
}

_FD = _descriptor.FieldDescriptor


class ManifestError(ValueError):
    """A manifest that cannot become a request; str() names the source, document and field."""

    def __init__(self, source: str, message: str, *, document: int | None = None,
                 field: str | None = None) -> None:
        self.source = source
        self.document = document
        self.field = field
        self.reason = message
        where = source
        if document is not None:
            where += f" (document {document + 1})"
        if field:
            message = f"{field}: {message}"
        super().__init__(f"{where}: {message}")


def load_documents(text: str, source: str = "<stdin>") -> list[dict[str, Any]]:
    """Every non-empty YAML document of ``text``, each a mapping; a ManifestError otherwise."""
    return [doc for _, doc in _load(text, source)[0]]


def _load(text: str, source: str) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """(index, mapping) of each non-empty document, and how many documents there were."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ManifestError(source, f"invalid YAML{at}: {problem}") from None
    out: list[tuple[int, dict[str, Any]]] = []
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            raise ManifestError(source, f"expected a mapping, got {_type_name(doc)}",
                                document=index if len(docs) > 1 else None)
        out.append((index, dict(doc)))
    if not out:
        raise ManifestError(source, "no documents found")
    return out, len(docs)


def parse_vm(doc: Mapping[str, Any], source: str = "<stdin>", *,
             document: int | None = None) -> vm_pb2.VirtualMachine:
    """One manifest document as a VirtualMachine to create: only metadata.name/labels and spec."""

    def fail(message: str, field: str | None = None) -> ManifestError:
        return ManifestError(source, message, document=document, field=field)

    api_version = doc.get("apiVersion", doc.get("api_version"))
    kind = doc.get("kind")
    if api_version is None:
        raise fail(f"missing apiVersion (expected {API_VERSION!r})", "apiVersion")
    if api_version != API_VERSION:
        raise fail(f"unsupported apiVersion {api_version!r} (expected {API_VERSION!r})",
                   "apiVersion")
    if kind is None:
        raise fail(f"missing kind (expected {VM_KIND!r})", "kind")
    if kind != VM_KIND:
        raise fail(f"unsupported kind {kind!r} (expected {VM_KIND!r})", "kind")
    for key in doc:
        if key == "status":
            raise fail("status is set by the server and may not appear in a manifest", "status")
        if key not in _TOP_LEVEL_FIELDS and key != "api_version":
            raise fail(f"unknown field (known fields: {', '.join(_TOP_LEVEL_FIELDS)})", str(key))

    metadata = doc.get("metadata")
    if not isinstance(metadata, Mapping):
        raise fail("missing metadata (a mapping with at least a name)" if metadata is None
                   else f"expected a mapping, got {_type_name(metadata)}", "metadata")
    for key in metadata:
        if key in _SERVER_METADATA:
            raise fail("set by the server and may not appear in a manifest",
                       f"metadata.{_SERVER_METADATA[key]}")
    name = metadata.get("name")
    if not name:
        raise fail("missing name", "metadata.name")
    spec = doc.get("spec")
    if spec is None:
        raise fail("missing spec", "spec")

    body = {"metadata": dict(metadata), "spec": _normalize_spec(spec)}
    vm = vm_pb2.VirtualMachine()
    _check_fields(body, vm.DESCRIPTOR, "", fail)
    try:
        json_format.ParseDict(body, vm)
    except json_format.ParseError as err:
        raise fail(_clean_parse_error(str(err))) from None
    return vm


def parse_vms(text: str, source: str = "<stdin>") -> list[vm_pb2.VirtualMachine]:
    """Every VirtualMachine in a (possibly multi-document) manifest; all or a ManifestError."""
    docs, total = _load(text, source)
    return [parse_vm(doc, source, document=index if total > 1 else None) for index, doc in docs]


def check_unique_names(vms: Iterable[tuple[str, vm_pb2.VirtualMachine]]) -> None:
    """A ManifestError if two manifests (source, vm) name the same VM."""
    seen: dict[str, str] = {}
    for source, vm in vms:
        name = vm.metadata.name
        if name in seen:
            raise ManifestError(source, f"virtualmachine {name!r} is also defined in "
                                f"{seen[name]}", field="metadata.name")
        seen[name] = source


def vm_to_manifest(vm: vm_pb2.VirtualMachine) -> dict[str, Any]:
    """A VM as a manifest dict (apiVersion, kind, metadata name/labels, spec): re-creatable."""
    body = json_format.MessageToDict(vm)
    meta = body.get("metadata", {})
    out: dict[str, Any] = {"apiVersion": API_VERSION, "kind": VM_KIND,
                           "metadata": {k: v for k, v in meta.items() if k in ("name", "labels")}}
    if "spec" in body:
        out["spec"] = body["spec"]
    return out


# --- helpers -------------------------------------------------------------------------------


def _normalize_spec(spec: Any) -> Any:
    """Lets disk formats be written ``raw``/``qcow2`` as well as ``DISK_FORMAT_RAW``, and run
    and eviction strategies as KubeVirt writes them (``Always``, ``LiveMigrateIfPossible``)."""
    if not isinstance(spec, Mapping):
        return spec
    spec = dict(spec)
    boot = spec.get("boot")
    if isinstance(boot, Mapping) and isinstance(boot.get("disk"), Mapping):
        disk = dict(boot["disk"])
        fmt = disk.get("format")
        if isinstance(fmt, str) and not fmt.upper().startswith("DISK_FORMAT_"):
            disk["format"] = "DISK_FORMAT_" + fmt.upper()
        spec["boot"] = {**boot, "disk": disk}
    disks = spec.get("disks")
    if isinstance(disks, list):
        spec["disks"] = [_normalize_disk(disk) for disk in disks]
    for key, prefix in (("runStrategy", "RUN_STRATEGY_"), ("evictionStrategy", "EVICTION_STRATEGY_")):
        value = spec.get(key)
        if isinstance(value, str) and not value.startswith(prefix):
            spec[key] = prefix + _upper_snake(value)  # KubeVirt's spelling: Always, LiveMigrate
    return spec


def _upper_snake(camel: str) -> str:
    """RerunOnFailure -> RERUN_ON_FAILURE."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", camel).upper()


def _normalize_disk(disk: Any) -> Any:
    """spec.disks[]: ephemeral.baseFormat and persistent.format, as for boot.disk.format."""
    if not isinstance(disk, Mapping):
        return disk
    disk = dict(disk)
    for source, keys in (("ephemeral", ("baseFormat", "base_format")), ("persistent", ("format",))):
        if isinstance(disk.get(source), Mapping):
            inner = dict(disk[source])
            for key in keys:
                fmt = inner.get(key)
                if isinstance(fmt, str) and not fmt.upper().startswith("DISK_FORMAT_"):
                    inner[key] = "DISK_FORMAT_" + fmt.upper()
            disk[source] = inner
    return disk


def _check_fields(value: Any, desc: _descriptor.Descriptor, path: str, fail) -> None:
    """Unknown fields and wrongly typed maps, named by their path, before ParseDict sees them."""
    if not isinstance(value, Mapping):
        raise fail(f"expected a mapping, got {_type_name(value)}", path or None)
    by_name: dict[str, _descriptor.FieldDescriptor] = {}
    for field in desc.fields:
        by_name[field.name] = field
        by_name[field.json_name] = field
    for key, item in value.items():
        here = f"{path}.{key}" if path else str(key)
        field = by_name.get(key) if isinstance(key, str) else None
        if field is None:
            known = ", ".join(f.json_name for f in desc.fields)
            raise fail(f"unknown field {str(key)!r} (known fields: {known})", here)
        if item is None:
            continue
        if field.type != _FD.TYPE_MESSAGE:
            continue
        msg = field.message_type
        if msg.GetOptions().map_entry:
            if not isinstance(item, Mapping):
                raise fail(f"expected a mapping, got {_type_name(item)}", here)
            value_field = msg.fields_by_name["value"]
            for map_key, map_value in item.items():
                if not isinstance(map_key, str):
                    raise fail(f"keys must be strings; quote {map_key!r}", here)
                if value_field.type == _FD.TYPE_STRING and not isinstance(map_value, str):
                    raise fail(f"expected a string, got {_type_name(map_value)} "
                               f"{map_value!r} (quote it)", f"{here}.{map_key}")
            continue
        if msg.full_name.startswith("google.protobuf."):
            continue  # well-known types (Timestamp) have their own JSON forms
        if _is_repeated(field):
            if not isinstance(item, list):
                raise fail(f"expected a list, got {_type_name(item)}", here)
            for i, element in enumerate(item):
                _check_fields(element, msg, f"{here}[{i}]", fail)
        else:
            _check_fields(item, msg, here, fail)


def _is_repeated(field: _descriptor.FieldDescriptor) -> bool:
    is_repeated = getattr(field, "is_repeated", None)
    if is_repeated is not None:
        return bool(is_repeated() if callable(is_repeated) else is_repeated)
    return field.label == _FD.LABEL_REPEATED


def _clean_parse_error(message: str) -> str:
    """json_format's 'Failed to parse a field: Failed to parse b field: why at X.' -> 'a.b: why'."""
    message = message.split("\n")[0].strip()
    path = []
    while True:
        m = re.match(r"Failed to parse (\w+) field: ", message)
        if not m:
            break
        path.append(m.group(1))
        message = message[m.end():]
    at = re.search(r' at "?VirtualMachine\.([\w.]+?)"?\.*$', message)
    if at:
        path = at.group(1).split(".")
        message = message[:at.start()]
    message = message.rstrip(".")
    return f"{'.'.join(path)}: {message}" if path else message


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    if value is None:
        return "null"
    return type(value).__name__
