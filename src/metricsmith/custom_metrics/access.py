"""Principals (organizations, users, teams) and the visibility rules.

Read: the owner always; members of the metric's team (in the metric's organization) for TEAM; users of the metric's
organization for ORGANIZATION; everyone for PUBLIC; organization admins see every metric of
their organization. Change / archive / backfill: only the owner or an admin of the metric's
organization. The SQL predicates below are used by every read and write of the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metricsmith.custom_metrics import identifiers as ids
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
    or (d.visibility = 'TEAM' and d.team_id = any(%(teams)s) and d.organization_id = %(org)s)
    or (%(admin)s and d.organization_id = %(org)s)
)"""


def principal(conn: Any, user_id: str) -> Principal:
    ids.principal_id(user_id, "user id")
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
            or (visibility == "TEAM" and team_id in who.teams and organization_id is not None
                and organization_id == who.organization_id)
            or (who.is_org_admin and organization_id is not None and organization_id == who.organization_id))


def can_write(who: Principal, owner_id: str, organization_id: str | None) -> bool:
    return owner_id == who.user_id or (who.is_org_admin and organization_id is not None
                                       and organization_id == who.organization_id)


def add_organization(conn: Any, organization_id: str, name: str = "") -> None:
    ids.principal_id(organization_id, "organization id")
    conn.execute("insert into metricsmith.organizations (organization_id, name) values (%s, %s) "
                 "on conflict (organization_id) do nothing", (organization_id, name))


def add_user(conn: Any, user_id: str, organization_id: str | None, *, is_org_admin: bool = False,
             teams: tuple[str, ...] = ()) -> None:
    """Add or re-declare a user: its organization, admin flag and exactly the teams given.

    A team belongs to one organization (the first user declared in it creates it there); a
    team of another organization is refused. Memberships not declared again are removed, so a
    user moved to another organization loses the TEAM access of the old one.
    """
    ids.principal_id(user_id, "user id")
    for team in teams:
        ids.principal_id(team, "team id")
    if organization_id is None and teams:
        raise AccessDenied(f"user {user_id} has no organization, so it cannot join team {teams[0]}")
    if organization_id is not None:
        add_organization(conn, organization_id)
    for team in teams:
        conn.execute("insert into metricsmith.teams (team_id, organization_id) values (%s, %s) "
                     "on conflict (team_id) do nothing", (team, organization_id))
        row = conn.execute("select organization_id from metricsmith.teams where team_id = %s for share",
                           (team,)).fetchone()
        if row is None or row[0] != organization_id:
            raise AccessDenied(f"team {team} belongs to another organization, not {organization_id}; "
                               "team ids are unique across organizations: choose another one")
    conn.execute(
        "insert into metricsmith.users (user_id, organization_id, is_org_admin) values (%s, %s, %s) "
        "on conflict (user_id) do update set organization_id = excluded.organization_id, "
        "is_org_admin = excluded.is_org_admin", (user_id, organization_id, is_org_admin))
    conn.execute("delete from metricsmith.team_members where user_id = %s and not (team_id = any(%s))",
                 (user_id, list(teams)))
    for team in teams:
        conn.execute("insert into metricsmith.team_members (team_id, user_id) values (%s, %s) "
                     "on conflict do nothing", (team, user_id))
