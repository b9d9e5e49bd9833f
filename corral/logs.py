"""One logging setup for every daemon: plain lines on a terminal, JSON lines otherwise.

Lines about a VM carry its name, uid and node as fields ("vm", "uid", "node"), from three
sources, later ones winning:

- process-wide fields: ``set_fields(node=...)`` once in a handler, ``set_fields(vm=..., uid=...,
  node=...)`` once in a launcher;
- a context: ``with vm_context(vm): ...`` (contextvars: per thread, not inherited by threads
  started inside it);
- the call: ``log_vm(log, vm, "started in %.1fs", seconds)`` or
  ``log.info("...", extra=vm_extra(vm))``.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator

#: The structured fields, in the order they appear on a line.
FIELD_NAMES = ("vm", "uid", "node")
_RECORD_ATTRIBUTE = "corral_fields"

_process_fields: dict[str, str] = {}
_context_fields: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("corral_log_fields", default={})


def vm_fields(vm: object = None, **fields: str) -> dict[str, str]:
    """{"vm": name, "uid": uid, "node": node} of a VirtualMachine (empty values left out),
    updated with the given fields."""
    found: dict[str, str] = {}
    if vm is not None:
        metadata = getattr(vm, "metadata", None)
        found["vm"] = getattr(metadata, "name", "")
        found["uid"] = getattr(metadata, "uid", "")
        found["node"] = getattr(getattr(vm, "status", None), "node_name", "")
    found.update(fields)
    return {key: str(value) for key, value in found.items() if value}


def vm_extra(vm: object = None, **fields: str) -> dict[str, dict[str, str]]:
    """For a logging call's extra=: the VM's fields on this one line."""
    return {_RECORD_ATTRIBUTE: vm_fields(vm, **fields)}


def log_vm(logger: logging.Logger, vm: object, msg: str, *args: object, level: int = logging.INFO,
           exc_info: object = None, **fields: str) -> None:
    """logger.log(level, msg, *args) with vm's name, uid and node (or the given fields)."""
    logger.log(level, msg, *args, exc_info=exc_info, extra=vm_extra(vm, **fields), stacklevel=2)


def set_fields(**fields: str) -> None:
    """Fields on every line of this process (an empty value removes one)."""
    for key, value in fields.items():
        if value:
            _process_fields[key] = str(value)
        else:
            _process_fields.pop(key, None)


@contextlib.contextmanager
def vm_context(vm: object = None, **fields: str) -> Iterator[None]:
    """Every line logged inside (in this thread) carries vm's fields."""
    token = _context_fields.set({**_context_fields.get(), **vm_fields(vm, **fields)})
    try:
        yield
    finally:
        _context_fields.reset(token)


def record_fields(record: logging.LogRecord) -> dict[str, str]:
    fields = {**_process_fields, **_context_fields.get(), **getattr(record, _RECORD_ATTRIBUTE, {})}
    ordered = {key: fields.pop(key) for key in FIELD_NAMES if key in fields}
    ordered.update(fields)
    return ordered


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        for key, value in record_fields(record).items():
            entry.setdefault(key, value)
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class PlainFormatter(logging.Formatter):
    """For a terminal: the usual line, then the fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = record_fields(record)
        if not fields:
            return line
        suffix = " ".join(f"{key}={value}" for key, value in fields.items())
        head, newline, rest = line.partition("\n")
        return f"{head} [{suffix}]{newline}{rest}"


def setup(level: str, *, name: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty():
        handler.setFormatter(PlainFormatter(f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
