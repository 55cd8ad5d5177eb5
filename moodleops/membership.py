"""Which Moodle users belong to which school: the one definition, for every reader.

platform.yml school_membership.method says how UT attaches a user to a school:

  cohort               a member of the cohort whose idnumber is the school's cohort_idnumber
                       (the playbook creates it); since = when they were added
  profile_field        the custom profile field school_membership.profile_field holds the
                       school code; since = the account's creation
  category_enrolments  an active enrolment (enabled method, active user enrolment) in a
                       course below the school's top-level category; since = first such enrolment

Deleted users are never members. A user may belong to several schools. The
storage exporter, billing, capacity reviews and incidents all read membership
here (read-only SQL, moodleops.moodledb); changing how UT identifies a school's
users is a change to this file only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from moodleops import moodledb
from moodleops.inventory import Platform

_MEMBERS = {
    "cohort": """
        SELECT cm.userid, s.code AS school, cm.timeadded AS since
          FROM {cohort_members} cm JOIN {cohort} c ON c.id = cm.cohortid
          JOIN unnest(%(m_keys)s::text[], %(m_codes)s::text[]) AS s(key, code) ON s.key = c.idnumber""",
    "profile_field": """
        SELECT d.userid, s.code AS school, u0.timecreated AS since
          FROM {user_info_data} d JOIN {user_info_field} f ON f.id = d.fieldid AND f.shortname = %(m_field)s
          JOIN {user} u0 ON u0.id = d.userid
          JOIN unnest(%(m_keys)s::text[], %(m_codes)s::text[]) AS s(key, code) ON s.key = d.data""",
    "category_enrolments": """
        SELECT ue.userid, s.code AS school, MIN(ue.timecreated) AS since
          FROM {user_enrolments} ue JOIN {enrol} e ON e.id = ue.enrolid AND e.status = 0
          JOIN {course} co ON co.id = e.courseid
          JOIN {course_categories} cc ON cc.id = co.category
          JOIN {course_categories} top ON cc.path = top.path OR cc.path LIKE top.path || '/%%'
          JOIN unnest(%(m_keys)s::text[], %(m_codes)s::text[]) AS s(key, code) ON s.key = top.idnumber
         WHERE ue.status = 0
         GROUP BY ue.userid, s.code""",
}

METHODS = tuple(_MEMBERS)


class SchoolKeys(Protocol):
    """What membership needs of a school (inventory School, exporter SchoolSpec)."""

    @property
    def code(self) -> str: ...
    @property
    def cohort_idnumber(self) -> str: ...
    @property
    def category_idnumber(self) -> str: ...


@dataclass(frozen=True)
class Rule:
    """platform.yml school_membership."""

    method: str
    profile_field: str = ""

    def key_of(self, school: SchoolKeys) -> str:
        """What identifies the school in Moodle under this method."""
        return {"cohort": school.cohort_idnumber, "profile_field": school.code}.get(
            self.method, school.category_idnumber)


def rule_of(platform: Platform) -> Rule:
    return Rule(platform.membership_method, platform.membership_profile_field)


def members_sql(rule: Rule, schools: Sequence[SchoolKeys]) -> tuple[str, dict[str, Any]]:
    """A subquery of (userid, school, since) rows, one per membership, and its
    parameters: embed it as `({members}) m` in a query for moodledb.q()."""
    if rule.method not in _MEMBERS:
        raise ValueError(f"unknown school membership method {rule.method!r}; known: {', '.join(METHODS)}")
    text = f"""SELECT mm.userid, mm.school, mm.since
      FROM ({_MEMBERS[rule.method]}) mm
      JOIN {{user}} mu ON mu.id = mm.userid AND mu.deleted = 0"""
    return text, {"m_keys": [rule.key_of(s) for s in schools], "m_codes": [s.code for s in schools],
                  "m_field": rule.profile_field}


def members(conn: psycopg.Connection[Any], prefix: str, rule: Rule,
            schools: Sequence[SchoolKeys]) -> dict[str, set[int]]:
    """School code -> ids of its members (every school asked, members or not)."""
    text, params = members_sql(rule, schools)
    out: dict[str, set[int]] = {s.code: set() for s in schools}
    for row in conn.execute(moodledb.q(prefix, f"SELECT m.school, m.userid FROM ({text}) m"), params):
        school, userid = (row["school"], row["userid"]) if isinstance(row, dict) else row
        out[str(school)].add(int(userid))
    return out


def problems(conn: psycopg.Connection[Any], prefix: str, rule: Rule,
             schools: Sequence[SchoolKeys]) -> dict[str, str]:
    """School code -> why its membership cannot be read (the cohort, category or
    profile field it relies on is not in Moodle); schools without problem are absent."""
    if rule.method == "profile_field":
        found = conn.execute(moodledb.q(prefix, "SELECT 1 FROM {user_info_field} WHERE shortname = %(f)s"),
                             {"f": rule.profile_field}).fetchone()
        return {} if found else {s.code: f"no custom profile field {rule.profile_field}" for s in schools}
    table, what = ("cohort", "cohort") if rule.method == "cohort" else ("course_categories", "category")
    keys = [rule.key_of(s) for s in schools]
    present = {r["idnumber"] if isinstance(r, dict) else r[0] for r in conn.execute(
        moodledb.q(prefix, f"SELECT idnumber FROM {{{table}}} WHERE idnumber = ANY(%(k)s)"), {"k": keys})}
    return {s.code: f"no {what} with idnumber {key}" for s, key in zip(schools, keys, strict=True)
            if key not in present}
