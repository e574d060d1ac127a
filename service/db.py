"""Engine and session factory for the one database (PostgreSQL via psycopg 3, or SQLite).

Engines are cached per URL so that tests can point the service at a fresh database by
changing the setting, and the API and the workers share the same construction rules
(pool pre-ping: a restarted PostgreSQL must not leave dead connections in the pool).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from service import job_versions
from service.settings import get_settings


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            # WAL lets the API read while a worker writes; foreign keys are off by default.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_recycle=1800)


def get_engine() -> Engine:
    return engine_for(get_settings().database_url)


@lru_cache(maxsize=8)
def _factory(url: str) -> sessionmaker[Session]:
    factory = sessionmaker(bind=engine_for(url), expire_on_commit=False)
    job_versions.install(factory)  # cached job copies in the API follow every committed job write
    return factory


def session_factory() -> sessionmaker[Session]:
    return _factory(get_settings().database_url)


@lru_cache(maxsize=8)
def _read_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=engine_for(url).execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)


def read_session_factory() -> sessionmaker[Session]:
    """Sessions for requests that only read: no BEGIN/ROLLBACK round trips around each
    statement, which halves the database time of a status poll. Same pool as the others."""
    return _read_factory(get_settings().database_url)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
