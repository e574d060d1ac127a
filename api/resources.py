"""What every resource endpoint shares: ownership checks, cursor pagination, filters, delete.

Ids are time-ordered (service.ids), so "newest first, strictly older than ``after``" is a
keyset scan on the primary key: stable under concurrent inserts and O(limit) per page.
"""

from __future__ import annotations

import re
from typing import Any, Sequence, TypeVar

from fastapi import Request
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from api.deps import Caller, Page
from api.errors import ApiError, field_error, not_found
from service.ids import looks_like
from service.models import QUEUED, RUNNING, Job, utcnow

Row = TypeVar("Row")
_META_PARAM = re.compile(r"^metadata\[([^\[\]]{1,64})\]$")


def metadata_filters(request: Request) -> dict[str, str]:
    """``?metadata[team]=vision&metadata[run]=7`` → ``{"team": "vision", "run": "7"}``."""
    found: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        match = _META_PARAM.match(key)
        if match:
            if "\x00" in key or "\x00" in value:
                raise ApiError(422, "metadata filters must not contain NUL characters", code="invalid_request",
                               errors=[field_error(key, "contains NUL", location="query")])
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


def owned(session: Session, caller: Caller, cls: Any, kind: str, object_id: str, param: str | None = None,
          options: Sequence[Any] = ()) -> Any:
    """The caller's object, or 404 whether it does not exist, is deleted or is another project's."""
    row = session.get(cls, object_id, options=list(options)) if looks_like(kind, object_id) else None
    if row is None or row.project_id != caller.project_id or getattr(row, "deleted_at", None) is not None:
        raise not_found(kind, object_id, param)
    return row


def list_owned(request: Request, session: Session, caller: Caller, cls: Any, page: Page, status: str | None,
               serialize: Any, stmt: Select[Any] | None = None) -> dict[str, Any]:
    stmt = (stmt if stmt is not None else select(cls)).where(cls.project_id == caller.project_id)
    if hasattr(cls, "deleted_at"):
        stmt = stmt.where(cls.deleted_at.is_(None))
    rows, more = page_of(session, apply_filters(stmt, cls, status, metadata_filters(request)), cls, page)
    return list_body([serialize(r) for r in rows], more)


def soft_delete(session: Session, row: Any, kind: str, job_column: Any) -> dict[str, Any]:
    """Mark deleted (jobs keep pointing at it); refused while a queued or running job uses it."""
    busy = session.scalar(select(Job.id).where(job_column == row.id, Job.status.in_([QUEUED, RUNNING])).limit(1))
    if busy:
        raise ApiError(409, f"job {busy} still uses this {kind}; cancel it first", code=f"{kind}_in_use",
                       param=f"{kind}_id")
    row.deleted_at = utcnow()
    session.commit()
    return {"id": row.id, "object": kind, "deleted": True}
