"""Principals (organizations, users, teams) and the visibility rules.

Read: the owner always; members of the metric's team for TEAM; users of the metric's
organization for ORGANIZATION; everyone for PUBLIC; organization admins see every metric of
their organization. Change / archive / backfill: only the owner or an admin of the metric's
organization. The SQL predicates below are used by every read and write of the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metricsmith.custom_metrics.errors import AccessDenied


@dataclass(frozen=True)
class Principal:
    user_id: str
    organization_id: str | None
    is_org_admin: bool
    teams: tuple[str, ...]


#: `d` is metricsmith.custom_metric_definitions; params: user, org, teams, admin
READ_PREDICATE = """(
    d.owner_id = %(user)s
    or d.visibility = 'PUBLIC'
    or (d.visibility = 'ORGANIZATION' and d.organization_id = %(org)s)
    or (d.visibility = 'TEAM' and d.team_id = any(%(teams)s))
    or (%(admin)s and d.organization_id = %(org)s)
)"""


def principal(conn: Any, user_id: str) -> Principal:
    row = conn.execute("select organization_id, is_org_admin from metricsmith.users where user_id = %s",
                       (user_id,)).fetchone()
    if row is None:
        raise AccessDenied(f"unknown user {user_id!r}; add it with `metricsmith metrics user USER --org ORG`")
    teams = tuple(r[0] for r in conn.execute(
        "select team_id from metricsmith.team_members where user_id = %s order by 1", (user_id,)).fetchall())
    return Principal(user_id, row[0], bool(row[1]), teams)


def read_params(who: Principal) -> dict[str, Any]:
    return {"user": who.user_id, "org": who.organization_id, "teams": list(who.teams), "admin": who.is_org_admin}


def can_read(who: Principal, owner_id: str, visibility: str, organization_id: str | None, team_id: str | None) -> bool:
    return (owner_id == who.user_id or visibility == "PUBLIC"
            or (visibility == "ORGANIZATION" and organization_id is not None and organization_id == who.organization_id)
            or (visibility == "TEAM" and team_id in who.teams)
            or (who.is_org_admin and organization_id is not None and organization_id == who.organization_id))


def can_write(who: Principal, owner_id: str, organization_id: str | None) -> bool:
    return owner_id == who.user_id or (who.is_org_admin and organization_id is not None
                                       and organization_id == who.organization_id)


def add_organization(conn: Any, organization_id: str, name: str = "") -> None:
    conn.execute("insert into metricsmith.organizations (organization_id, name) values (%s, %s) "
                 "on conflict (organization_id) do nothing", (organization_id, name))


def add_user(conn: Any, user_id: str, organization_id: str | None, *, is_org_admin: bool = False,
             teams: tuple[str, ...] = ()) -> None:
    if organization_id is not None:
        add_organization(conn, organization_id)
    conn.execute(
        "insert into metricsmith.users (user_id, organization_id, is_org_admin) values (%s, %s, %s) "
        "on conflict (user_id) do update set organization_id = excluded.organization_id, "
        "is_org_admin = excluded.is_org_admin", (user_id, organization_id, is_org_admin))
    for team in teams:
        if organization_id is None:
            raise AccessDenied(f"user {user_id} has no organization, so it cannot join team {team}")
        conn.execute("insert into metricsmith.teams (team_id, organization_id) values (%s, %s) "
                     "on conflict (team_id) do nothing", (team, organization_id))
        conn.execute("insert into metricsmith.team_members (team_id, user_id) values (%s, %s) "
                     "on conflict do nothing", (team, user_id))
