"""/v1/project: who am I, and the secret that signs my webhooks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import CallerDep, SessionDep
from api.errors import PROBLEM_RESPONSES
from api.schemas import ProjectObject
from service.models import Project

router = APIRouter(prefix="/v1/project", tags=["project"], responses=PROBLEM_RESPONSES)


@router.get("", response_model=ProjectObject, summary="The calling key's project")
def get_project(caller: CallerDep, session: SessionDep) -> Any:
    row = session.get(Project, caller.project_id)
    return {"id": row.id, "object": "project", "name": row.name, "webhook_secret": row.webhook_secret,  # type: ignore[union-attr]
            "created_at": row.created_at}  # type: ignore[union-attr]
