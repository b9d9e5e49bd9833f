"""Create, get, list, update and delete for every kind the API serves, by one naming rule.

The services name their calls alike (``CreateVirtualMachinePool(CreateVirtualMachinePoolRequest
(virtual_machine_pool=...))`` answered with ``.virtual_machine_pool``; ``ListInstanceTypes``
answered with ``.instance_types``), so one table entry per kind gives the CLI's generic verbs
(apply, edit, delete -l) every kind without a method per kind and call. ``Client`` inherits
``ResourceCalls``; the named helpers (``create_pool``, ``scale_pool``...) are for code and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from corral.v1 import (instancetype_pb2, instancetype_pb2_grpc, migration_pb2, migration_pb2_grpc, node_pb2,
                       node_pb2_grpc, pool_pb2, pool_pb2_grpc, snapshot_pb2, snapshot_pb2_grpc, vm_pb2,
                       vm_pb2_grpc)


@dataclass(frozen=True)
class Api:
    """How one kind's calls are named: ``{verb}{message}`` and ``List{plural}``."""

    message: str  # "VirtualMachinePool": the message, and the call names' suffix
    field: str  # "virtual_machine_pool": the request's and the response's field
    plural: str  # "VirtualMachinePools"
    plural_field: str  # "virtual_machine_pools"
    pb2: ModuleType
    stub: type

    def request(self, call: str, **fields: Any) -> Any:
        """``request("Get", name="x")`` -> GetVirtualMachinePoolRequest(name="x")."""
        name = f"{call}{self.plural if call == 'List' else self.message}Request"
        return getattr(self.pb2, name)(**fields)

    def method(self, call: str) -> str:
        return f"{call}{self.plural if call == 'List' else self.message}"


APIS: dict[str, Api] = {api.message: api for api in (
    Api("VirtualMachine", "virtual_machine", "VirtualMachines", "virtual_machines", vm_pb2,
        vm_pb2_grpc.VirtualMachineServiceStub),
    Api("VirtualMachinePool", "virtual_machine_pool", "VirtualMachinePools", "virtual_machine_pools", pool_pb2,
        pool_pb2_grpc.VirtualMachinePoolServiceStub),
    Api("InstanceType", "instance_type", "InstanceTypes", "instance_types", instancetype_pb2,
        instancetype_pb2_grpc.InstanceTypeServiceStub),
    Api("Preference", "preference", "Preferences", "preferences", instancetype_pb2,
        instancetype_pb2_grpc.PreferenceServiceStub),
    Api("Node", "node", "Nodes", "nodes", node_pb2, node_pb2_grpc.NodeServiceStub),
    Api("Migration", "migration", "Migrations", "migrations", migration_pb2, migration_pb2_grpc.MigrationServiceStub),
    Api("VirtualMachineSnapshot", "snapshot", "VirtualMachineSnapshots", "snapshots", snapshot_pb2,
        snapshot_pb2_grpc.VirtualMachineSnapshotServiceStub),
)}


def api_of(kind_or_object: str | Any) -> Api:
    """The table entry for a kind name ("VirtualMachinePool") or for a message of that kind."""
    kind = kind_or_object if isinstance(kind_or_object, str) else kind_or_object.DESCRIPTOR.name
    return APIS[kind]


class ResourceCalls:
    """Generic calls; mixed into corral.client.Client, which provides _unary and _paged."""

    _unary: Callable[[type, str, Any], Any]
    _paged: Callable[[Callable[[str], Any], Callable[[Any], Iterable[Any]]], list[Any]]

    def create_object(self, obj: Any) -> Any:
        """Creates ``obj`` (metadata name/labels/annotations and spec); returns it as stored."""
        api = api_of(obj)
        response = self._unary(api.stub, api.method("Create"), api.request("Create", **{api.field: obj}))
        return getattr(response, api.field)

    def get_object(self, kind: str, name: str) -> Any:
        """One object by kind name and name; NOT_FOUND as a grpc.RpcError."""
        api = api_of(kind)
        return getattr(self._unary(api.stub, api.method("Get"), api.request("Get", name=name)), api.field)

    def list_objects(self, kind: str, label_selector: str = "") -> list[Any]:
        """Every object of ``kind`` matching the selector, all pages."""
        api = api_of(kind)
        return self._paged(
            lambda token: self._unary(api.stub, api.method("List"),
                                      api.request("List", page_token=token, label_selector=label_selector)),
            lambda response: getattr(response, api.plural_field))

    def update_object(self, obj: Any) -> Any:
        """Replaces labels and spec of obj.metadata.name; ABORTED if its resource_version is stale."""
        api = api_of(obj)
        response = self._unary(api.stub, api.method("Update"), api.request("Update", **{api.field: obj}))
        return getattr(response, api.field)

    def delete_object(self, kind: str, name: str, resource_version: int = 0, **fields: Any) -> Any | None:
        """Requests deletion (``orphan=True`` for a pool); returns what the server answers with
        (a VM with delete_time set), or None when the answer carries no object."""
        api = api_of(kind)
        response = self._unary(api.stub, api.method("Delete"),
                               api.request("Delete", name=name, resource_version=resource_version, **fields))
        if api.field in response.DESCRIPTOR.fields_by_name and response.HasField(api.field):
            return getattr(response, api.field)
        return None

    # --- pools -------------------------------------------------------------------------------

    def create_pool(self, pool: pool_pb2.VirtualMachinePool) -> pool_pb2.VirtualMachinePool:
        return self.create_object(pool)

    def get_pool(self, name: str) -> pool_pb2.VirtualMachinePool:
        return self.get_object("VirtualMachinePool", name)

    def list_pools(self, label_selector: str = "") -> list[pool_pb2.VirtualMachinePool]:
        return self.list_objects("VirtualMachinePool", label_selector)

    def update_pool(self, pool: pool_pb2.VirtualMachinePool) -> pool_pb2.VirtualMachinePool:
        return self.update_object(pool)

    def delete_pool(self, name: str, *, orphan: bool = False, resource_version: int = 0) -> None:
        """Deletes the pool and, unless ``orphan``, its VMs."""
        self.delete_object("VirtualMachinePool", name, resource_version, orphan=orphan)

    def scale_pool(self, name: str, replicas: int, resource_version: int = 0) -> pool_pb2.VirtualMachinePool:
        """Sets spec.replicas only; ABORTED when ``resource_version`` is given and stale."""
        api = APIS["VirtualMachinePool"]
        request = pool_pb2.ScaleVirtualMachinePoolRequest(name=name, replicas=replicas,
                                                          resource_version=resource_version)
        return self._unary(api.stub, "ScaleVirtualMachinePool", request).virtual_machine_pool

    # --- instance types and preferences ------------------------------------------------------

    def create_instance_type(self, instance_type: instancetype_pb2.InstanceType) -> instancetype_pb2.InstanceType:
        return self.create_object(instance_type)

    def get_instance_type(self, name: str) -> instancetype_pb2.InstanceType:
        return self.get_object("InstanceType", name)

    def list_instance_types(self, label_selector: str = "") -> list[instancetype_pb2.InstanceType]:
        return self.list_objects("InstanceType", label_selector)

    def update_instance_type(self, instance_type: instancetype_pb2.InstanceType) -> instancetype_pb2.InstanceType:
        return self.update_object(instance_type)

    def delete_instance_type(self, name: str, resource_version: int = 0) -> None:
        self.delete_object("InstanceType", name, resource_version)

    def create_preference(self, preference: instancetype_pb2.Preference) -> instancetype_pb2.Preference:
        return self.create_object(preference)

    def get_preference(self, name: str) -> instancetype_pb2.Preference:
        return self.get_object("Preference", name)

    def list_preferences(self, label_selector: str = "") -> list[instancetype_pb2.Preference]:
        return self.list_objects("Preference", label_selector)

    def update_preference(self, preference: instancetype_pb2.Preference) -> instancetype_pb2.Preference:
        return self.update_object(preference)

    def delete_preference(self, name: str, resource_version: int = 0) -> None:
        self.delete_object("Preference", name, resource_version)
