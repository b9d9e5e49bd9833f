from corral.v1 import vm_pb2 as _vm_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DomainState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DOMAIN_STATE_UNSPECIFIED: _ClassVar[DomainState]
    DOMAIN_STATE_STARTING: _ClassVar[DomainState]
    DOMAIN_STATE_RUNNING: _ClassVar[DomainState]
    DOMAIN_STATE_PAUSED: _ClassVar[DomainState]
    DOMAIN_STATE_SHUTTING_DOWN: _ClassVar[DomainState]
    DOMAIN_STATE_SHUTOFF: _ClassVar[DomainState]
    DOMAIN_STATE_CRASHED: _ClassVar[DomainState]
DOMAIN_STATE_UNSPECIFIED: DomainState
DOMAIN_STATE_STARTING: DomainState
DOMAIN_STATE_RUNNING: DomainState
DOMAIN_STATE_PAUSED: DomainState
DOMAIN_STATE_SHUTTING_DOWN: DomainState
DOMAIN_STATE_SHUTOFF: DomainState
DOMAIN_STATE_CRASHED: DomainState

class DomainStatus(_message.Message):
    __slots__ = ("state", "reason", "message", "vm_uid", "qemu_pid", "launcher_pid", "serial_log_path", "guest", "saved_state_path")
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VM_UID_FIELD_NUMBER: _ClassVar[int]
    QEMU_PID_FIELD_NUMBER: _ClassVar[int]
    LAUNCHER_PID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_LOG_PATH_FIELD_NUMBER: _ClassVar[int]
    GUEST_FIELD_NUMBER: _ClassVar[int]
    SAVED_STATE_PATH_FIELD_NUMBER: _ClassVar[int]
    state: DomainState
    reason: str
    message: str
    vm_uid: str
    qemu_pid: int
    launcher_pid: int
    serial_log_path: str
    guest: _vm_pb2.GuestInfo
    saved_state_path: str
    def __init__(self, state: _Optional[_Union[DomainState, str]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., vm_uid: _Optional[str] = ..., qemu_pid: _Optional[int] = ..., launcher_pid: _Optional[int] = ..., serial_log_path: _Optional[str] = ..., guest: _Optional[_Union[_vm_pb2.GuestInfo, _Mapping]] = ..., saved_state_path: _Optional[str] = ...) -> None: ...

class GetDomainStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetDomainStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class WatchDomainStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchDomainStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class ShutdownDomainRequest(_message.Message):
    __slots__ = ("grace_period_seconds",)
    GRACE_PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    grace_period_seconds: int
    def __init__(self, grace_period_seconds: _Optional[int] = ...) -> None: ...

class ShutdownDomainResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class KillDomainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KillDomainResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class PauseDomainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PauseDomainResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class ResumeDomainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeDomainResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class RebootDomainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RebootDomainResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class ResetDomainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResetDomainResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class SaveDomainRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class SaveDomainResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class AttachConsoleRequest(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class AttachConsoleResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...
