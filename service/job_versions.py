"""Version tokens for job rows in Redis, replaced after every commit that writes a job.

Status polls are the hottest request of the API, and a poll that reads PostgreSQL costs
milliseconds of CPU on the API host. The API therefore keeps the JSON of each job in
process memory (api.job_status) and asks Redis, in one round trip, whether it is still
current: an entry counts only while the job's token *and* a global token are the ones it
was read under. Writers never touch the cache itself; they replace tokens:

* a flush that inserts, changes or deletes a ``Job`` through the ORM names that job;
* a bulk ``update(Job)``/``delete(Job)`` whose WHERE pins ``Job.id`` (``==`` or ``IN``)
  names those jobs; any other bulk statement on jobs replaces the global token, which
  voids every entry at once.

Tokens are replaced in ``after_commit``, i.e. before the writer announces the change
(events, webhooks): a client that saw an event and then polls is never shown an older job.
Tokens are random, not counters, so a Redis that restarts or evicts a key voids the
entries read under it instead of letting an old one match again. A writer that cannot reach
Redis leaves entries in place until their TTL (api.job_status.ENTRY_TTL_SECONDS) ends.
"""

from __future__ import annotations

import uuid
from typing import Any, Iterable

import redis
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList, ClauseElement

from service.models import Job
from service.redis_client import get_redis
from service.settings import get_settings

TOKEN_TTL_SECONDS = 7 * 24 * 3600
EVERYTHING = "*"
_PENDING = "bise.job_versions.pending"


def job_token_key(prefix: str, job_id: str) -> str:
    return f"{prefix}jobv:{job_id}"


def global_token_key(prefix: str) -> str:
    return f"{prefix}jobv:*"


def new_token() -> str:
    return uuid.uuid4().hex


def _pending(session: Session) -> set[str]:
    return session.info.setdefault(_PENDING, set())


def _on_flush(session: Session, _context: Any) -> None:
    touched = [obj.id for obj in (*session.new, *session.dirty, *session.deleted) if isinstance(obj, Job)]
    if touched:
        _pending(session).update(touched)


def _pinned_ids(where: ClauseElement | None) -> set[str] | None:
    """The job ids a WHERE clause restricts rows to, or None when it does not pin them."""
    if where is None:
        return None
    clauses = where.clauses if isinstance(where, BooleanClauseList) and where.operator is operators.and_ else [where]
    id_column = Job.__table__.c.id
    for clause in clauses:
        if not isinstance(clause, BinaryExpression) or not clause.left.compare(id_column):
            continue
        if not isinstance(clause.right, BindParameter):
            continue
        value = clause.right.effective_value
        if clause.operator is operators.eq and isinstance(value, str):
            return {value}
        if clause.operator is operators.in_op and isinstance(value, (list, tuple)):
            return {str(v) for v in value}
    return None


def _on_execute(state: ORMExecuteState) -> None:
    if not (state.is_update or state.is_delete):
        return
    mapper = state.bind_mapper
    if mapper is None or mapper.class_ is not Job:
        return
    ids = _pinned_ids(getattr(state.statement, "whereclause", None))
    _pending(state.session).update(ids if ids is not None else {EVERYTHING})


def _on_commit(session: Session) -> None:
    touched = session.info.pop(_PENDING, None)
    if touched:
        replace_tokens(touched)


def _on_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


def install(factory: sessionmaker[Session]) -> None:
    """Track job writes made through sessions of ``factory``."""
    event.listen(factory, "after_flush", _on_flush)
    event.listen(factory, "do_orm_execute", _on_execute)
    event.listen(factory, "after_commit", _on_commit)
    event.listen(factory, "after_rollback", _on_rollback)


def replace_tokens(job_ids: Iterable[str]) -> None:
    """Void cached copies of ``job_ids`` (``EVERYTHING`` voids all); never raises."""
    client = get_redis()
    if client is None:
        return
    prefix = get_settings().redis_prefix
    try:
        pipe = client.pipeline(transaction=False)
        for job_id in job_ids:
            key = global_token_key(prefix) if job_id == EVERYTHING else job_token_key(prefix, job_id)
            pipe.set(key, new_token(), ex=TOKEN_TTL_SECONDS)
        pipe.execute()
    except redis.RedisError:
        pass  # entries then live out their short TTL; a Redis that is down also stops the caching
