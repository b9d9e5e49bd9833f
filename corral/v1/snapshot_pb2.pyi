import datetime

from corral.v1 import meta_pb2 as _meta_pb2
from corral.v1 import vm_pb2 as _vm_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SnapshotPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SNAPSHOT_PHASE_UNSPECIFIED: _ClassVar[SnapshotPhase]
    SNAPSHOT_PHASE_PENDING: _ClassVar[SnapshotPhase]
    SNAPSHOT_PHASE_IN_PROGRESS: _ClassVar[SnapshotPhase]
    SNAPSHOT_PHASE_SUCCEEDED: _ClassVar[SnapshotPhase]
    SNAPSHOT_PHASE_FAILED: _ClassVar[SnapshotPhase]

class RestorePhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESTORE_PHASE_UNSPECIFIED: _ClassVar[RestorePhase]
    RESTORE_PHASE_IN_PROGRESS: _ClassVar[RestorePhase]
    RESTORE_PHASE_SUCCEEDED: _ClassVar[RestorePhase]
    RESTORE_PHASE_FAILED: _ClassVar[RestorePhase]
SNAPSHOT_PHASE_UNSPECIFIED: SnapshotPhase
SNAPSHOT_PHASE_PENDING: SnapshotPhase
SNAPSHOT_PHASE_IN_PROGRESS: SnapshotPhase
SNAPSHOT_PHASE_SUCCEEDED: SnapshotPhase
SNAPSHOT_PHASE_FAILED: SnapshotPhase
RESTORE_PHASE_UNSPECIFIED: RestorePhase
RESTORE_PHASE_IN_PROGRESS: RestorePhase
RESTORE_PHASE_SUCCEEDED: RestorePhase
RESTORE_PHASE_FAILED: RestorePhase

class VirtualMachineSnapshot(_message.Message):
    __slots__ = ("metadata", "spec", "status")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    metadata: _meta_pb2.ObjectMeta
    spec: VirtualMachineSnapshotSpec
    status: VirtualMachineSnapshotStatus
    def __init__(self, metadata: _Optional[_Union[_meta_pb2.ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[VirtualMachineSnapshotSpec, _Mapping]] = ..., status: _Optional[_Union[VirtualMachineSnapshotStatus, _Mapping]] = ...) -> None: ...

class VirtualMachineSnapshotSpec(_message.Message):
    __slots__ = ("vm_name",)
    VM_NAME_FIELD_NUMBER: _ClassVar[int]
    vm_name: str
    def __init__(self, vm_name: _Optional[str] = ...) -> None: ...

class SnapshotDisk(_message.Message):
    __slots__ = ("name", "path", "tag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    tag: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., tag: _Optional[str] = ...) -> None: ...

class VirtualMachineSnapshotStatus(_message.Message):
    __slots__ = ("phase", "conditions", "vm_uid", "node_name", "instance_uid", "disks", "indications", "creation_time", "skipped_disks", "restore")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    VM_UID_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    INDICATIONS_FIELD_NUMBER: _ClassVar[int]
    CREATION_TIME_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_DISKS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    phase: SnapshotPhase
    conditions: _containers.RepeatedCompositeFieldContainer[_meta_pb2.Condition]
    vm_uid: str
    node_name: str
    instance_uid: str
    disks: _containers.RepeatedCompositeFieldContainer[SnapshotDisk]
    indications: _containers.RepeatedScalarFieldContainer[str]
    creation_time: _timestamp_pb2.Timestamp
    skipped_disks: _containers.RepeatedScalarFieldContainer[str]
    restore: SnapshotRestore
    def __init__(self, phase: _Optional[_Union[SnapshotPhase, str]] = ..., conditions: _Optional[_Iterable[_Union[_meta_pb2.Condition, _Mapping]]] = ..., vm_uid: _Optional[str] = ..., node_name: _Optional[str] = ..., instance_uid: _Optional[str] = ..., disks: _Optional[_Iterable[_Union[SnapshotDisk, _Mapping]]] = ..., indications: _Optional[_Iterable[str]] = ..., creation_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., skipped_disks: _Optional[_Iterable[str]] = ..., restore: _Optional[_Union[SnapshotRestore, _Mapping]] = ...) -> None: ...

class SnapshotRestore(_message.Message):
    __slots__ = ("phase", "start", "start_time", "end_time", "reason", "message")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    phase: RestorePhase
    start: bool
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    reason: str
    message: str
    def __init__(self, phase: _Optional[_Union[RestorePhase, str]] = ..., start: _Optional[bool] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class CreateVirtualMachineSnapshotRequest(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: VirtualMachineSnapshot
    def __init__(self, snapshot: _Optional[_Union[VirtualMachineSnapshot, _Mapping]] = ...) -> None: ...

class CreateVirtualMachineSnapshotResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: VirtualMachineSnapshot
    def __init__(self, snapshot: _Optional[_Union[VirtualMachineSnapshot, _Mapping]] = ...) -> None: ...

class GetVirtualMachineSnapshotRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetVirtualMachineSnapshotResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: VirtualMachineSnapshot
    def __init__(self, snapshot: _Optional[_Union[VirtualMachineSnapshot, _Mapping]] = ...) -> None: ...

class ListVirtualMachineSnapshotsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "label_selector", "vm_name")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    VM_NAME_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    label_selector: str
    vm_name: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., label_selector: _Optional[str] = ..., vm_name: _Optional[str] = ...) -> None: ...

class ListVirtualMachineSnapshotsResponse(_message.Message):
    __slots__ = ("snapshots", "next_page_token", "resource_version")
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    snapshots: _containers.RepeatedCompositeFieldContainer[VirtualMachineSnapshot]
    next_page_token: str
    resource_version: int
    def __init__(self, snapshots: _Optional[_Iterable[_Union[VirtualMachineSnapshot, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., resource_version: _Optional[int] = ...) -> None: ...

class DeleteVirtualMachineSnapshotRequest(_message.Message):
    __slots__ = ("name", "resource_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    resource_version: int
    def __init__(self, name: _Optional[str] = ..., resource_version: _Optional[int] = ...) -> None: ...

class DeleteVirtualMachineSnapshotResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: VirtualMachineSnapshot
    def __init__(self, snapshot: _Optional[_Union[VirtualMachineSnapshot, _Mapping]] = ...) -> None: ...

class RestoreVirtualMachineSnapshotRequest(_message.Message):
    __slots__ = ("name", "start")
    NAME_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    name: str
    start: bool
    def __init__(self, name: _Optional[str] = ..., start: _Optional[bool] = ...) -> None: ...

class RestoreVirtualMachineSnapshotResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: VirtualMachineSnapshot
    def __init__(self, snapshot: _Optional[_Union[VirtualMachineSnapshot, _Mapping]] = ...) -> None: ...

class DiskSnapshotTarget(_message.Message):
    __slots__ = ("name", "path", "format")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    format: _vm_pb2.DiskFormat
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., format: _Optional[_Union[_vm_pb2.DiskFormat, str]] = ...) -> None: ...

class TakeDiskSnapshotsRequest(_message.Message):
    __slots__ = ("name", "instance_uid", "tag", "disks")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    instance_uid: str
    tag: str
    disks: _containers.RepeatedCompositeFieldContainer[DiskSnapshotTarget]
    def __init__(self, name: _Optional[str] = ..., instance_uid: _Optional[str] = ..., tag: _Optional[str] = ..., disks: _Optional[_Iterable[_Union[DiskSnapshotTarget, _Mapping]]] = ...) -> None: ...

class TakeDiskSnapshotsResponse(_message.Message):
    __slots__ = ("indications", "freeze_message")
    INDICATIONS_FIELD_NUMBER: _ClassVar[int]
    FREEZE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    indications: _containers.RepeatedScalarFieldContainer[str]
    freeze_message: str
    def __init__(self, indications: _Optional[_Iterable[str]] = ..., freeze_message: _Optional[str] = ...) -> None: ...

class RestoreDiskSnapshotsRequest(_message.Message):
    __slots__ = ("name", "tag", "disks")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    tag: str
    disks: _containers.RepeatedCompositeFieldContainer[DiskSnapshotTarget]
    def __init__(self, name: _Optional[str] = ..., tag: _Optional[str] = ..., disks: _Optional[_Iterable[_Union[DiskSnapshotTarget, _Mapping]]] = ...) -> None: ...

class RestoreDiskSnapshotsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteDiskSnapshotsRequest(_message.Message):
    __slots__ = ("name", "instance_uid", "tag", "disks")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    instance_uid: str
    tag: str
    disks: _containers.RepeatedCompositeFieldContainer[DiskSnapshotTarget]
    def __init__(self, name: _Optional[str] = ..., instance_uid: _Optional[str] = ..., tag: _Optional[str] = ..., disks: _Optional[_Iterable[_Union[DiskSnapshotTarget, _Mapping]]] = ...) -> None: ...

class DeleteDiskSnapshotsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotDomainDisksRequest(_message.Message):
    __slots__ = ("tag", "disks", "freeze")
    TAG_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    FREEZE_FIELD_NUMBER: _ClassVar[int]
    tag: str
    disks: _containers.RepeatedScalarFieldContainer[str]
    freeze: bool
    def __init__(self, tag: _Optional[str] = ..., disks: _Optional[_Iterable[str]] = ..., freeze: _Optional[bool] = ...) -> None: ...

class SnapshotDomainDisksResponse(_message.Message):
    __slots__ = ("indications", "freeze_message")
    INDICATIONS_FIELD_NUMBER: _ClassVar[int]
    FREEZE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    indications: _containers.RepeatedScalarFieldContainer[str]
    freeze_message: str
    def __init__(self, indications: _Optional[_Iterable[str]] = ..., freeze_message: _Optional[str] = ...) -> None: ...

class DeleteDomainDiskSnapshotsRequest(_message.Message):
    __slots__ = ("tag", "disks")
    TAG_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    tag: str
    disks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tag: _Optional[str] = ..., disks: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteDomainDiskSnapshotsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
