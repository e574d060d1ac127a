"""API keys: generated once, shown once, stored as SHA-256.

Keys carry 256 random bits, so a plain SHA-256 (no salt, no slow KDF) is enough to make a
leaked table useless while keeping the per-request lookup a single indexed equality.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import key_cache
from service.ids import new_id
from service.models import ApiKey, Project, utcnow
from service.webhooks import new_secret

KEY_PREFIX = "bise_sk_"


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def get_or_create_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(id=new_id("project"), name=name, webhook_secret=new_secret())
        session.add(project)
        session.flush()
    return project


def create_key(session: Session, project_name: str) -> tuple[ApiKey, str]:
    """Create a key for ``project_name`` (creating the project if new); return (row, raw key)."""
    project = get_or_create_project(session, project_name)
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(id=new_id("key"), project_id=project.id, prefix=raw[: len(KEY_PREFIX) + 6], key_hash=hash_key(raw))
    session.add(key)
    session.flush()
    return key, raw


def revoke_key(session: Session, key_or_id: str) -> ApiKey | None:
    """Revoke by key id (``key_...``) or by the raw key itself. Returns None when unknown."""
    where = ApiKey.id == key_or_id if key_or_id.startswith("key_") else ApiKey.key_hash == hash_key(key_or_id)
    key = session.scalar(select(ApiKey).where(where))
    if key is not None and key.revoked_at is None:
        key.revoked_at = utcnow()
        key_cache.invalidate_after_commit(session)
    return key


def key_from_database(session: Session, digest: str, generation: bytes | None) -> tuple[str, str] | None:
    """(project id, key id) of a valid key from the database, remembered in service.key_cache
    (the API asks key_cache first, on the event loop, and comes here on a miss)."""
    row = session.execute(
        select(ApiKey.project_id, ApiKey.id).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    key_cache.remember(digest, row[0], row[1], generation)
    return row[0], row[1]
