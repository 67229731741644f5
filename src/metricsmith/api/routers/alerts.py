"""``/v1/alerts``: the alert incidents (firing, pending, resolved), newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from metricsmith import migrate
from metricsmith.alerts.evaluate import list_incidents
from metricsmith.api.deps import State, User
from metricsmith.api.errors import BadParameter
from metricsmith.api.serialization import JSONResponse

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])

STATES = ("PENDING", "FIRING", "RESOLVED")


@router.get("", summary="Alert incidents, newest first (state=FIRING for what is wrong now)")
def alerts(state: State, user: User,
           incident_state: Annotated[str | None, Query(alias="state", max_length=20,
                                                       description="PENDING, FIRING or RESOLVED")] = None,
           limit: Annotated[int, Query(ge=1, le=500)] = 100) -> JSONResponse:
    if incident_state is not None and incident_state.upper() not in STATES:
        raise BadParameter("state", f"unknown incident state {incident_state!r}: use {', '.join(STATES)}")
    with state.connection() as conn:
        if conn.execute("select to_regclass('metricsmith.alert_incidents')").fetchone() == (None,):
            migrate.upgrade(state.settings)  # an older database: the alert tables come with migration 0040
        rows = list_incidents(conn, incident_state, limit)
    return JSONResponse({"state": incident_state.upper() if incident_state else None, "incidents": rows,
                         "firing": sum(1 for r in rows if r["state"] == "FIRING")})
