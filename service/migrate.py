"""Apply the Alembic migrations programmatically (admin CLI, API start-up, tests).

The migration scripts ship as the ``migrations`` package so that this works the same from
a source checkout and from an installed wheel (the Docker image).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations
from service.settings import get_settings


def alembic_config(database_url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.attributes["database_url"] = database_url or get_settings().database_url
    return cfg


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def current_heads(database_url: str | None = None) -> set[str]:
    """Heads of the migration scripts (what a migrated database's alembic_version holds)."""
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())
