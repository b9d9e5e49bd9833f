from corral.v1 import launcher_pb2 as _launcher_pb2
from corral.v1 import snapshot_pb2 as _snapshot_pb2
from corral.v1 import vm_pb2 as _vm_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PauseInstanceRequest(_message.Message):
    __slots__ = ("name", "instance_uid")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    name: str
    instance_uid: str
    def __init__(self, name: _Optional[str] = ..., instance_uid: _Optional[str] = ...) -> None: ...

class PauseInstanceResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _launcher_pb2.DomainStatus
    def __init__(self, status: _Optional[_Union[_launcher_pb2.DomainStatus, _Mapping]] = ...) -> None: ...

class UnpauseInstanceRequest(_message.Message):
    __slots__ = ("name", "instance_uid")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    name: str
    instance_uid: str
    def __init__(self, name: _Optional[str] = ..., instance_uid: _Optional[str] = ...) -> None: ...

class UnpauseInstanceResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _launcher_pb2.DomainStatus
    def __init__(self, status: _Optional[_Union[_launcher_pb2.DomainStatus, _Mapping]] = ...) -> None: ...

class SoftRebootInstanceRequest(_message.Message):
    __slots__ = ("name", "instance_uid")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    name: str
    instance_uid: str
    def __init__(self, name: _Optional[str] = ..., instance_uid: _Optional[str] = ...) -> None: ...

class SoftRebootInstanceResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _launcher_pb2.DomainStatus
    def __init__(self, status: _Optional[_Union[_launcher_pb2.DomainStatus, _Mapping]] = ...) -> None: ...

class ResetInstanceRequest(_message.Message):
    __slots__ = ("name", "instance_uid")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    name: str
    instance_uid: str
    def __init__(self, name: _Optional[str] = ..., instance_uid: _Optional[str] = ...) -> None: ...

class ResetInstanceResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _launcher_pb2.DomainStatus
    def __init__(self, status: _Optional[_Union[_launcher_pb2.DomainStatus, _Mapping]] = ...) -> None: ...

class AttachInstanceConsoleRequest(_message.Message):
    __slots__ = ("name", "instance_uid", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    instance_uid: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., instance_uid: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class AttachInstanceConsoleResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class AttachInstanceDiskRequest(_message.Message):
    __slots__ = ("name", "instance_uid", "disk")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    name: str
    instance_uid: str
    disk: _vm_pb2.Disk
    def __init__(self, name: _Optional[str] = ..., instance_uid: _Optional[str] = ..., disk: _Optional[_Union[_vm_pb2.Disk, _Mapping]] = ...) -> None: ...

class AttachInstanceDiskResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _launcher_pb2.DomainStatus
    def __init__(self, status: _Optional[_Union[_launcher_pb2.DomainStatus, _Mapping]] = ...) -> None: ...

class DetachInstanceDiskRequest(_message.Message):
    __slots__ = ("name", "instance_uid", "disk_name", "path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    DISK_NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    instance_uid: str
    disk_name: str
    path: str
    def __init__(self, name: _Optional[str] = ..., instance_uid: _Optional[str] = ..., disk_name: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class DetachInstanceDiskResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _launcher_pb2.DomainStatus
    def __init__(self, status: _Optional[_Union[_launcher_pb2.DomainStatus, _Mapping]] = ...) -> None: ...

class ResizeInstanceRequest(_message.Message):
    __slots__ = ("name", "instance_uid", "vcpus", "memory_mib")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    name: str
    instance_uid: str
    vcpus: int
    memory_mib: int
    def __init__(self, name: _Optional[str] = ..., instance_uid: _Optional[str] = ..., vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ...) -> None: ...

class ResizeInstanceResponse(_message.Message):
    __slots__ = ("status", "vcpus", "memory_mib")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    status: _launcher_pb2.DomainStatus
    vcpus: int
    memory_mib: int
    def __init__(self, status: _Optional[_Union[_launcher_pb2.DomainStatus, _Mapping]] = ..., vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ...) -> None: ...
