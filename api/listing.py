"""Cursor pagination and filters shared by every list endpoint.

Ids are time-ordered (service.ids), so "newest first, strictly older than ``after``" is a
keyset scan on the primary key: stable under concurrent inserts and O(limit) per page.
"""

from __future__ import annotations

import re
from typing import Any, Sequence, TypeVar

from fastapi import Request
from sqlalchemy import Select
from sqlalchemy.orm import Session

from api.deps import Page
from api.errors import ApiError, field_error

Row = TypeVar("Row")
_META_PARAM = re.compile(r"^metadata\[([^\[\]]{1,64})\]$")


def metadata_filters(request: Request) -> dict[str, str]:
    """``?metadata[team]=vision&metadata[run]=7`` → ``{"team": "vision", "run": "7"}``."""
    found: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        match = _META_PARAM.match(key)
        if match:
            found[match.group(1)] = value
        elif key.startswith("metadata"):
            raise ApiError(422, f"bad metadata filter {key!r}: use metadata[KEY]=VALUE", code="invalid_request",
                           errors=[field_error(key, "use metadata[KEY]=VALUE", location="query")])
    return found


def apply_filters(stmt: Select[Any], cls: Any, status: str | None, meta: dict[str, str]) -> Select[Any]:
    if status is not None:
        stmt = stmt.where(cls.status == status)
    for key, value in meta.items():
        stmt = stmt.where(cls.meta[key].as_string() == value)
    return stmt


def page_of(session: Session, stmt: Select[Any], cls: Any, page: Page) -> tuple[Sequence[Any], bool]:
    if page.after:
        stmt = stmt.where(cls.id < page.after)
    rows = list(session.scalars(stmt.order_by(cls.id.desc()).limit(page.limit + 1)))
    return rows[: page.limit], len(rows) > page.limit


def list_body(items: list[Any], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": items, "has_more": has_more,
            "last_id": items[-1]["id"] if items and isinstance(items[-1], dict) else (items[-1].id if items else None)}
