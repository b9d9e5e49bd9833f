"""Settings shared by every Corral daemon: one pydantic model per daemon, read from the
environment (CORRAL_*) and overridden by command-line flags, validated at start."""
from __future__ import annotations

import os
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class CommonSettings(BaseSettings):
    """What every daemon needs: where etcd is and where Corral's keys live in it."""

    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="forbid")

    etcd_endpoints: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:2379"],
        description="etcd client URLs, comma-separated in the environment",
    )
    etcd_prefix: str = Field("/corral/", description="key prefix of all Corral state")
    etcd_timeout_seconds: float = Field(5.0, gt=0)
    log_level: str = "INFO"

    @field_validator("etcd_endpoints", mode="before")
    @classmethod
    def _endpoints_list(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("etcd_endpoints")
    @classmethod
    def _endpoints_are_urls(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one etcd endpoint is needed")
        for url in value:
            parts = urlsplit(url if "://" in url else f"http://{url}")
            if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
                raise ValueError(f"etcd endpoint {url!r} is not of the form http://HOST:PORT")
        return value

    @field_validator("etcd_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if not value.startswith("/") or not value.endswith("/"):
            raise ValueError("etcd_prefix must start and end with '/', e.g. /corral/")
        return value


class ControllerSettings(CommonSettings):
    """corral-controller: the API server and, on the elected leader, the reconcilers."""

    listen: str = Field("127.0.0.1:7100", description="HOST:PORT the gRPC API listens on")
    replica_id: str = Field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")
    leader_lease_seconds: int = Field(3, ge=2, le=60)
    resync_seconds: float = Field(2.0, gt=0)


class HandlerSettings(CommonSettings):
    """corral-handler: one per node."""

    node_name: str = Field(default_factory=lambda: os.uname().nodename)
    servers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1:7100"],
        description="controller addresses HOST:PORT, comma-separated in the environment",
    )
    state_dir: str = Field("/var/lib/corral", description="per-VM directories live below it")
    capacity_vcpus: int = Field(0, ge=0, description="0: the host's CPU count")
    capacity_memory_mib: int = Field(0, ge=0, description="0: the host's memory less 1 GiB")
    node_labels: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    heartbeat_seconds: int = Field(5, ge=2, le=120, description="TTL of the node lease")
    emulation: str = Field("auto", description="auto (KVM when /dev/kvm works), on (TCG), off")
    shutdown_grace_seconds: int = Field(30, ge=0)
    launcher_command: str = Field("", description="how to run corral-launcher; default: this Python")

    @field_validator("servers", mode="before")
    @classmethod
    def _servers_list(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("node_labels", mode="before")
    @classmethod
    def _labels_dict(cls, value: object) -> object:
        if isinstance(value, str):
            labels: dict[str, str] = {}
            for item in _split_list(value):
                key, sep, val = item.partition("=")
                if not sep:
                    raise ValueError(f"node label {item!r} is not KEY=VALUE")
                labels[key.strip()] = val.strip()
            return labels
        return value

    @field_validator("emulation")
    @classmethod
    def _emulation_choice(cls, value: str) -> str:
        if value not in ("auto", "on", "off"):
            raise ValueError("emulation must be auto, on or off")
        return value
