from corral.v1 import meta_pb2 as _meta_pb2
from corral.v1 import vm_pb2 as _vm_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PreferredCpuTopology(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREFERRED_CPU_TOPOLOGY_UNSPECIFIED: _ClassVar[PreferredCpuTopology]
    PREFERRED_CPU_TOPOLOGY_SOCKETS: _ClassVar[PreferredCpuTopology]
    PREFERRED_CPU_TOPOLOGY_CORES: _ClassVar[PreferredCpuTopology]
    PREFERRED_CPU_TOPOLOGY_THREADS: _ClassVar[PreferredCpuTopology]
PREFERRED_CPU_TOPOLOGY_UNSPECIFIED: PreferredCpuTopology
PREFERRED_CPU_TOPOLOGY_SOCKETS: PreferredCpuTopology
PREFERRED_CPU_TOPOLOGY_CORES: PreferredCpuTopology
PREFERRED_CPU_TOPOLOGY_THREADS: PreferredCpuTopology

class InstanceType(_message.Message):
    __slots__ = ("metadata", "spec")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    metadata: _meta_pb2.ObjectMeta
    spec: InstanceTypeSpec
    def __init__(self, metadata: _Optional[_Union[_meta_pb2.ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[InstanceTypeSpec, _Mapping]] = ...) -> None: ...

class InstanceTypeSpec(_message.Message):
    __slots__ = ("vcpus", "memory_mib", "dedicated_cpu_placement", "hugepages", "node_selector")
    class NodeSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    DEDICATED_CPU_PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    HUGEPAGES_FIELD_NUMBER: _ClassVar[int]
    NODE_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    vcpus: int
    memory_mib: int
    dedicated_cpu_placement: bool
    hugepages: _vm_pb2.Hugepages
    node_selector: _containers.ScalarMap[str, str]
    def __init__(self, vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., dedicated_cpu_placement: _Optional[bool] = ..., hugepages: _Optional[_Union[_vm_pb2.Hugepages, _Mapping]] = ..., node_selector: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Preference(_message.Message):
    __slots__ = ("metadata", "spec")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    metadata: _meta_pb2.ObjectMeta
    spec: PreferenceSpec
    def __init__(self, metadata: _Optional[_Union[_meta_pb2.ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[PreferenceSpec, _Mapping]] = ...) -> None: ...

class PreferenceSpec(_message.Message):
    __slots__ = ("disk_bus", "machine_type", "firmware", "preferred_cpu_topology", "termination_grace_period_seconds")
    DISK_BUS_FIELD_NUMBER: _ClassVar[int]
    MACHINE_TYPE_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_CPU_TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    TERMINATION_GRACE_PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    disk_bus: _vm_pb2.DiskBus
    machine_type: str
    firmware: _vm_pb2.Firmware
    preferred_cpu_topology: PreferredCpuTopology
    termination_grace_period_seconds: int
    def __init__(self, disk_bus: _Optional[_Union[_vm_pb2.DiskBus, str]] = ..., machine_type: _Optional[str] = ..., firmware: _Optional[_Union[_vm_pb2.Firmware, str]] = ..., preferred_cpu_topology: _Optional[_Union[PreferredCpuTopology, str]] = ..., termination_grace_period_seconds: _Optional[int] = ...) -> None: ...

class Revision(_message.Message):
    __slots__ = ("metadata", "instance_type", "preference")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    metadata: _meta_pb2.ObjectMeta
    instance_type: InstanceTypeSpec
    preference: PreferenceSpec
    def __init__(self, metadata: _Optional[_Union[_meta_pb2.ObjectMeta, _Mapping]] = ..., instance_type: _Optional[_Union[InstanceTypeSpec, _Mapping]] = ..., preference: _Optional[_Union[PreferenceSpec, _Mapping]] = ...) -> None: ...

class CreateInstanceTypeRequest(_message.Message):
    __slots__ = ("instance_type",)
    INSTANCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    instance_type: InstanceType
    def __init__(self, instance_type: _Optional[_Union[InstanceType, _Mapping]] = ...) -> None: ...

class CreateInstanceTypeResponse(_message.Message):
    __slots__ = ("instance_type",)
    INSTANCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    instance_type: InstanceType
    def __init__(self, instance_type: _Optional[_Union[InstanceType, _Mapping]] = ...) -> None: ...

class GetInstanceTypeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetInstanceTypeResponse(_message.Message):
    __slots__ = ("instance_type",)
    INSTANCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    instance_type: InstanceType
    def __init__(self, instance_type: _Optional[_Union[InstanceType, _Mapping]] = ...) -> None: ...

class ListInstanceTypesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "label_selector")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    label_selector: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., label_selector: _Optional[str] = ...) -> None: ...

class ListInstanceTypesResponse(_message.Message):
    __slots__ = ("instance_types", "next_page_token")
    INSTANCE_TYPES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    instance_types: _containers.RepeatedCompositeFieldContainer[InstanceType]
    next_page_token: str
    def __init__(self, instance_types: _Optional[_Iterable[_Union[InstanceType, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateInstanceTypeRequest(_message.Message):
    __slots__ = ("instance_type",)
    INSTANCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    instance_type: InstanceType
    def __init__(self, instance_type: _Optional[_Union[InstanceType, _Mapping]] = ...) -> None: ...

class UpdateInstanceTypeResponse(_message.Message):
    __slots__ = ("instance_type",)
    INSTANCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    instance_type: InstanceType
    def __init__(self, instance_type: _Optional[_Union[InstanceType, _Mapping]] = ...) -> None: ...

class DeleteInstanceTypeRequest(_message.Message):
    __slots__ = ("name", "resource_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    resource_version: int
    def __init__(self, name: _Optional[str] = ..., resource_version: _Optional[int] = ...) -> None: ...

class DeleteInstanceTypeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreatePreferenceRequest(_message.Message):
    __slots__ = ("preference",)
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    preference: Preference
    def __init__(self, preference: _Optional[_Union[Preference, _Mapping]] = ...) -> None: ...

class CreatePreferenceResponse(_message.Message):
    __slots__ = ("preference",)
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    preference: Preference
    def __init__(self, preference: _Optional[_Union[Preference, _Mapping]] = ...) -> None: ...

class GetPreferenceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetPreferenceResponse(_message.Message):
    __slots__ = ("preference",)
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    preference: Preference
    def __init__(self, preference: _Optional[_Union[Preference, _Mapping]] = ...) -> None: ...

class ListPreferencesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "label_selector")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    label_selector: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., label_selector: _Optional[str] = ...) -> None: ...

class ListPreferencesResponse(_message.Message):
    __slots__ = ("preferences", "next_page_token")
    PREFERENCES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    preferences: _containers.RepeatedCompositeFieldContainer[Preference]
    next_page_token: str
    def __init__(self, preferences: _Optional[_Iterable[_Union[Preference, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdatePreferenceRequest(_message.Message):
    __slots__ = ("preference",)
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    preference: Preference
    def __init__(self, preference: _Optional[_Union[Preference, _Mapping]] = ...) -> None: ...

class UpdatePreferenceResponse(_message.Message):
    __slots__ = ("preference",)
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    preference: Preference
    def __init__(self, preference: _Optional[_Union[Preference, _Mapping]] = ...) -> None: ...

class DeletePreferenceRequest(_message.Message):
    __slots__ = ("name", "resource_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    resource_version: int
    def __init__(self, name: _Optional[str] = ..., resource_version: _Optional[int] = ...) -> None: ...

class DeletePreferenceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
