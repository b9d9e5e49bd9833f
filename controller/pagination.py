"""Opaque page tokens: the store revision the first page was read at and the last name
returned, so every page of one listing reads the same snapshot."""
from __future__ import annotations

import base64
import json

from controller.errors import RequestError

import grpc

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    if requested < 0:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "page_size must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(revision: int, last_name: str) -> str:
    raw = json.dumps({"r": revision, "a": last_name}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> tuple[int, str]:
    """(revision, last name); (0, "") for the first page."""
    if not token:
        return 0, ""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        revision, last_name = int(data["r"]), str(data["a"])
        if revision <= 0:
            raise ValueError
        return revision, last_name
    except (ValueError, KeyError, TypeError):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "page_token is not one this server issued; start again without it") from None
