import datetime

from corral.v1 import meta_pb2 as _meta_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STRATEGY_UNSPECIFIED: _ClassVar[RunStrategy]
    RUN_STRATEGY_ALWAYS: _ClassVar[RunStrategy]
    RUN_STRATEGY_RERUN_ON_FAILURE: _ClassVar[RunStrategy]
    RUN_STRATEGY_MANUAL: _ClassVar[RunStrategy]
    RUN_STRATEGY_HALTED: _ClassVar[RunStrategy]
    RUN_STRATEGY_ONCE: _ClassVar[RunStrategy]

class DiskFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISK_FORMAT_UNSPECIFIED: _ClassVar[DiskFormat]
    DISK_FORMAT_RAW: _ClassVar[DiskFormat]
    DISK_FORMAT_QCOW2: _ClassVar[DiskFormat]

class VirtualMachinePhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VIRTUAL_MACHINE_PHASE_UNSPECIFIED: _ClassVar[VirtualMachinePhase]
    VIRTUAL_MACHINE_PHASE_PENDING: _ClassVar[VirtualMachinePhase]
    VIRTUAL_MACHINE_PHASE_SCHEDULED: _ClassVar[VirtualMachinePhase]
    VIRTUAL_MACHINE_PHASE_RUNNING: _ClassVar[VirtualMachinePhase]
    VIRTUAL_MACHINE_PHASE_SUCCEEDED: _ClassVar[VirtualMachinePhase]
    VIRTUAL_MACHINE_PHASE_FAILED: _ClassVar[VirtualMachinePhase]
RUN_STRATEGY_UNSPECIFIED: RunStrategy
RUN_STRATEGY_ALWAYS: RunStrategy
RUN_STRATEGY_RERUN_ON_FAILURE: RunStrategy
RUN_STRATEGY_MANUAL: RunStrategy
RUN_STRATEGY_HALTED: RunStrategy
RUN_STRATEGY_ONCE: RunStrategy
DISK_FORMAT_UNSPECIFIED: DiskFormat
DISK_FORMAT_RAW: DiskFormat
DISK_FORMAT_QCOW2: DiskFormat
VIRTUAL_MACHINE_PHASE_UNSPECIFIED: VirtualMachinePhase
VIRTUAL_MACHINE_PHASE_PENDING: VirtualMachinePhase
VIRTUAL_MACHINE_PHASE_SCHEDULED: VirtualMachinePhase
VIRTUAL_MACHINE_PHASE_RUNNING: VirtualMachinePhase
VIRTUAL_MACHINE_PHASE_SUCCEEDED: VirtualMachinePhase
VIRTUAL_MACHINE_PHASE_FAILED: VirtualMachinePhase

class VirtualMachine(_message.Message):
    __slots__ = ("metadata", "spec", "status")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    metadata: _meta_pb2.ObjectMeta
    spec: VirtualMachineSpec
    status: VirtualMachineStatus
    def __init__(self, metadata: _Optional[_Union[_meta_pb2.ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[VirtualMachineSpec, _Mapping]] = ..., status: _Optional[_Union[VirtualMachineStatus, _Mapping]] = ...) -> None: ...

class VirtualMachineSpec(_message.Message):
    __slots__ = ("vcpus", "memory_mib", "boot", "node_selector", "run_strategy")
    class NodeSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    BOOT_FIELD_NUMBER: _ClassVar[int]
    NODE_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    RUN_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    vcpus: int
    memory_mib: int
    boot: BootSource
    node_selector: _containers.ScalarMap[str, str]
    run_strategy: RunStrategy
    def __init__(self, vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., boot: _Optional[_Union[BootSource, _Mapping]] = ..., node_selector: _Optional[_Mapping[str, str]] = ..., run_strategy: _Optional[_Union[RunStrategy, str]] = ...) -> None: ...

class BootSource(_message.Message):
    __slots__ = ("kernel", "disk")
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    kernel: KernelBoot
    disk: DiskBoot
    def __init__(self, kernel: _Optional[_Union[KernelBoot, _Mapping]] = ..., disk: _Optional[_Union[DiskBoot, _Mapping]] = ...) -> None: ...

class KernelBoot(_message.Message):
    __slots__ = ("kernel_path", "initrd_path", "cmdline")
    KERNEL_PATH_FIELD_NUMBER: _ClassVar[int]
    INITRD_PATH_FIELD_NUMBER: _ClassVar[int]
    CMDLINE_FIELD_NUMBER: _ClassVar[int]
    kernel_path: str
    initrd_path: str
    cmdline: str
    def __init__(self, kernel_path: _Optional[str] = ..., initrd_path: _Optional[str] = ..., cmdline: _Optional[str] = ...) -> None: ...

class DiskBoot(_message.Message):
    __slots__ = ("image_path", "format")
    IMAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    image_path: str
    format: DiskFormat
    def __init__(self, image_path: _Optional[str] = ..., format: _Optional[_Union[DiskFormat, str]] = ...) -> None: ...

class PhaseTransition(_message.Message):
    __slots__ = ("phase", "time")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    phase: VirtualMachinePhase
    time: _timestamp_pb2.Timestamp
    def __init__(self, phase: _Optional[_Union[VirtualMachinePhase, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class VirtualMachineStatus(_message.Message):
    __slots__ = ("phase", "node_name", "conditions", "phase_transitions", "serial_log_path", "instance_uid", "restart_count", "start_after", "assignment_token")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    PHASE_TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    SERIAL_LOG_PATH_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    phase: VirtualMachinePhase
    node_name: str
    conditions: _containers.RepeatedCompositeFieldContainer[_meta_pb2.Condition]
    phase_transitions: _containers.RepeatedCompositeFieldContainer[PhaseTransition]
    serial_log_path: str
    instance_uid: str
    restart_count: int
    start_after: _timestamp_pb2.Timestamp
    assignment_token: int
    def __init__(self, phase: _Optional[_Union[VirtualMachinePhase, str]] = ..., node_name: _Optional[str] = ..., conditions: _Optional[_Iterable[_Union[_meta_pb2.Condition, _Mapping]]] = ..., phase_transitions: _Optional[_Iterable[_Union[PhaseTransition, _Mapping]]] = ..., serial_log_path: _Optional[str] = ..., instance_uid: _Optional[str] = ..., restart_count: _Optional[int] = ..., start_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., assignment_token: _Optional[int] = ...) -> None: ...

class CreateVirtualMachineRequest(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class CreateVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class GetVirtualMachineRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class ListVirtualMachinesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "label_selector")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    label_selector: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., label_selector: _Optional[str] = ...) -> None: ...

class ListVirtualMachinesResponse(_message.Message):
    __slots__ = ("virtual_machines", "next_page_token", "resource_version")
    VIRTUAL_MACHINES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    virtual_machines: _containers.RepeatedCompositeFieldContainer[VirtualMachine]
    next_page_token: str
    resource_version: int
    def __init__(self, virtual_machines: _Optional[_Iterable[_Union[VirtualMachine, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., resource_version: _Optional[int] = ...) -> None: ...

class UpdateVirtualMachineRequest(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class UpdateVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class DeleteVirtualMachineRequest(_message.Message):
    __slots__ = ("name", "resource_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    resource_version: int
    def __init__(self, name: _Optional[str] = ..., resource_version: _Optional[int] = ...) -> None: ...

class DeleteVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class WatchVirtualMachinesRequest(_message.Message):
    __slots__ = ("resource_version", "label_selector")
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    resource_version: int
    label_selector: str
    def __init__(self, resource_version: _Optional[int] = ..., label_selector: _Optional[str] = ...) -> None: ...

class WatchVirtualMachinesResponse(_message.Message):
    __slots__ = ("type", "virtual_machine", "resource_version")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    type: _meta_pb2.WatchEventType
    virtual_machine: VirtualMachine
    resource_version: int
    def __init__(self, type: _Optional[_Union[_meta_pb2.WatchEventType, str]] = ..., virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ..., resource_version: _Optional[int] = ...) -> None: ...
