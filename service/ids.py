"""Prefixed, time-ordered ids (``job_01JD...``).

The body is a ULID-style string: 48 bits of milliseconds then 80 random bits in Crockford
base32, so that ids sort by creation time. Cursor pagination relies on that: ``after=<id>``
is a plain ``id < :after`` on an indexed primary key.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

PREFIXES = {"project": "prj", "key": "key", "model": "mdl", "dataset": "dst", "job": "job", "webhook": "msg"}


def _b32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(kind: str) -> str:
    """A new id for an object of ``kind`` (a key of :data:`PREFIXES`)."""
    millis = int(time.time() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    return f"{PREFIXES[kind]}_{_b32(millis, 10)}{_b32(rand, 16)}"


def looks_like(kind: str, value: str) -> bool:
    """Whether ``value`` has the shape of an id of ``kind`` (used to 404 early on junk)."""
    prefix = PREFIXES[kind] + "_"
    body = value[len(prefix):]
    return value.startswith(prefix) and len(body) == 26 and all(c in _ALPHABET for c in body)
