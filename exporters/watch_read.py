"""One read of Moodle's health and abuse signals, with the read-only role.

Everything is an aggregate over Moodle's own tables and its standard logstore:
the database does the counting, this process gets a few hundred rows at most.
All reads run in one read-only snapshot, so the figures of one read agree."""

from __future__ import annotations

import ipaddress
import json
import time
from collections import defaultdict
from typing import Any

import psycopg
import requests
from moodleops.exporters.watch_model import (
    FAILED_LOGINS_WINDOW_S,
    MESSAGES_WINDOW_S,
    NEW_ROLES_WINDOW_S,
    NO_SCHOOL,
    PLATFORM,
    UNKNOWN_USER,
    Sender,
    TaskDelay,
    WatchConfig,
    WatchResult,
)

MESSAGE_EVENTS = {"\\core\\event\\message_sent": "message", "\\core\\event\\notification_sent": "notification"}
LOGIN_FAILED = "\\core\\event\\user_login_failed"
CONTEXT_SYSTEM, CONTEXT_COURSECAT = 10, 40


class WatchError(Exception):
    """A read failed for an expected reason (database down, timeout): one line."""


def _oneline(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def source_class(ip: str) -> str:
    """Bounded label for a source address: loopback, private, public or unknown."""
    try:
        addr = ipaddress.ip_address((ip or "").strip())
    except ValueError:
        return "unknown"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback:
        return "loopback"
    if addr.is_private or addr.is_link_local:
        return "private"
    return "public"


def _members_sql(cfg: WatchConfig) -> tuple[str, dict[str, Any]]:
    """SQL of (code, userid): the school of each member, per platform.yml school_membership."""
    p = cfg.db.prefix
    pol = cfg.membership
    if pol.method == "cohort":
        keys = [s.cohort_idnumber for s in cfg.schools]
        inner = (f"SELECT c.idnumber AS k, cm.userid FROM {p}cohort c "
                 f"JOIN {p}cohort_members cm ON cm.cohortid = c.id WHERE c.idnumber = ANY(%(keys)s)")
    elif pol.method == "profile_field":
        keys = [s.code for s in cfg.schools]
        inner = (f"SELECT d.data AS k, d.userid FROM {p}user_info_data d "
                 f"JOIN {p}user_info_field fl ON fl.id = d.fieldid AND fl.shortname = %(mfield)s "
                 "WHERE d.data = ANY(%(keys)s)")
    else:   # category_enrolments: enrolled in a course below the school's category
        keys = [s.category_idnumber for s in cfg.schools]
        inner = (f"SELECT root.idnumber AS k, ue.userid FROM {p}course_categories root "
                 f"JOIN {p}course_categories cc ON cc.id = root.id OR cc.path LIKE root.path || '/%%' "
                 f"JOIN {p}course c ON c.category = cc.id JOIN {p}enrol e ON e.courseid = c.id "
                 f"JOIN {p}user_enrolments ue ON ue.enrolid = e.id WHERE root.idnumber = ANY(%(keys)s)")
    sql = (f"SELECT DISTINCT s.code, m.userid FROM ({inner}) m "
           "JOIN unnest(%(keys)s::text[], %(codes)s::text[]) AS s(k, code) ON s.k = m.k")
    return sql, {"keys": keys, "codes": [s.code for s in cfg.schools], "mfield": pol.membership_field}


def connect(cfg: WatchConfig) -> psycopg.Connection[Any]:
    db = cfg.db
    try:
        conn = psycopg.connect(host=db.host, port=db.port, dbname=db.dbname, user=db.user,
                               password=db.password, connect_timeout=cfg.connect_timeout_s,
                               application_name="moodleops-watch",
                               options=f"-c statement_timeout={cfg.statement_timeout_ms}")
    except psycopg.Error as exc:
        raise WatchError(f"cannot connect to {db.describe()}: {_oneline(exc)}") from exc
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn


def read(cfg: WatchConfig, *, now: float | None = None) -> WatchResult:
    started = time.time()
    now = started if now is None else now
    result = WatchResult(read_at=now)
    try:
        with connect(cfg) as conn, conn.cursor() as cur:
            _health(cfg, cur, now, result)
            members, params = _members_sql(cfg)
            _online(cfg, cur, members, params, now, result)
            _messages(cfg, cur, members, params, now, result)
            _failed_logins(cfg, cur, members, params, now, result)
            _admins(cfg, cur, now, result)
            _roles(cfg, cur, now, result)
    except psycopg.Error as exc:
        raise WatchError(f"reading Moodle's tables as {cfg.db.describe()} failed: {_oneline(exc)}") from exc
    result.maintenance_cli = (cfg.dataroot / "climaintenance.html").exists()
    if cfg.fpm_status_url:
        _fpm(cfg, result)
    result.duration_s = time.time() - started
    return result


def _config(cur: psycopg.Cursor[Any], p: str, name: str, plugin: str | None = None) -> str | None:
    if plugin is None:
        cur.execute(f"SELECT value FROM {p}config WHERE name = %s", (name,))
    else:
        cur.execute(f"SELECT value FROM {p}config_plugins WHERE plugin = %s AND name = %s", (plugin, name))
    row = cur.fetchone()
    return None if row is None else str(row[0])


def _health(cfg: WatchConfig, cur: psycopg.Cursor[Any], now: float, r: WatchResult) -> None:
    p = cfg.db.prefix
    # Moodle records each cron run's start in tool_task/lastcronstart (what its
    # own "cron running" check reads); before the first run, fall back to tasks.
    last = _config(cur, p, "lastcronstart", "tool_task")
    if last is None or not last.isdigit():
        cur.execute(f"SELECT MAX(lastruntime) FROM {p}task_scheduled")
        row = cur.fetchone()
        last = str(row[0]) if row and row[0] else None
    r.cron_last_start = float(last) if last else None
    # Every enabled task, 0 when it runs fine: a bounded set (Moodle's task classes).
    cur.execute(f"SELECT classname, faildelay FROM {p}task_scheduled WHERE disabled = 0 ORDER BY classname")
    r.tasks = [TaskDelay(task=str(c).lstrip("\\"), fail_delay_s=int(d)) for c, d in cur.fetchall()]
    cur.execute(f"SELECT COUNT(*), COUNT(*) FILTER (WHERE faildelay > 0), MIN(timecreated) FROM {p}task_adhoc")
    queued, failing, oldest = cur.fetchone() or (0, 0, None)
    r.adhoc_queued, r.adhoc_failing = int(queued), int(failing)
    r.adhoc_oldest_created = float(oldest) if oldest else None
    timeout = _config(cur, p, "sessiontimeout")
    timeout_s = int(timeout) if timeout and timeout.isdigit() else 28800
    cur.execute(f"SELECT COUNT(*) FROM {p}sessions WHERE state = 0 AND timemodified >= %s",
                (int(now) - timeout_s,))
    r.sessions_active = int(cur.fetchone()[0])   # type: ignore[index]
    r.maintenance_web = (_config(cur, p, "maintenance_enabled") or "0") not in ("", "0")
    core = _config(cur, p, "version")
    if core:
        r.served_versions["core"] = core
    plugins = [pin.component for pin in cfg.pins if pin.component != "core"]
    cur.execute(f"SELECT plugin, value FROM {p}config_plugins WHERE name = 'version' AND plugin = ANY(%s)",
                (plugins,))
    for plugin, value in cur.fetchall():
        r.served_versions[str(plugin)] = str(value)


def _online(cfg: WatchConfig, cur: psycopg.Cursor[Any], members: str, params: dict[str, Any], now: float,
            r: WatchResult) -> None:
    p = cfg.db.prefix
    r.online = {s.code: 0 for s in cfg.schools}
    cur.execute(f"SELECT m.code, COUNT(DISTINCT u.id) FROM ({members}) m JOIN {p}user u ON u.id = m.userid "
                "WHERE u.deleted = 0 AND u.lastaccess >= %(since)s GROUP BY m.code",
                {**params, "since": int(now) - cfg.online_window_s})
    for code, n in cur.fetchall():
        r.online[str(code)] = int(n)


def _messages(cfg: WatchConfig, cur: psycopg.Cursor[Any], members: str, params: dict[str, Any], now: float,
              r: WatchResult) -> None:
    p = cfg.db.prefix
    # The sender is the event's user (userfrom); Moodle's own noreply/support
    # users have negative ids and are not anybody's mass mailing. A deleted
    # account's messages still count for the school, but it is nobody's top
    # sender: it sends no more, and the runbook could not act on it (Moodle
    # renamed it to email.timestamp).
    cur.execute(f"""
        WITH sent AS (
            SELECT userid, eventname, COUNT(*) AS n FROM {p}logstore_standard_log
             WHERE timecreated >= %(since)s AND eventname = ANY(%(events)s) AND userid > 0
             GROUP BY userid, eventname)
        SELECT COALESCE(m.code, %(none)s), u.username, u.deleted, s.eventname, s.n
          FROM sent s JOIN {p}user u ON u.id = s.userid
          LEFT JOIN ({members}) m ON m.userid = s.userid""",
                {**params, "since": int(now) - MESSAGES_WINDOW_S, "events": list(MESSAGE_EVENTS),
                 "none": NO_SCHOOL})
    totals: dict[tuple[str, str], int] = defaultdict(int)
    per_user: dict[tuple[str, str], int] = defaultdict(int)
    for school, username, deleted, event, n in cur.fetchall():
        totals[(str(school), MESSAGE_EVENTS[str(event)])] += int(n)
        if not deleted:
            per_user[(str(school), str(username))] += int(n)
    for s in cfg.schools:
        for kind in MESSAGE_EVENTS.values():
            totals.setdefault((s.code, kind), 0)
    r.messages = dict(totals)
    by_school: dict[str, list[Sender]] = defaultdict(list)
    for (school, username), n in per_user.items():
        by_school[school].append(Sender(school, username, n))
    r.max_sender = {s.code: 0 for s in cfg.schools}
    for school, senders in by_school.items():
        senders.sort(key=lambda x: (-x.sent, x.username))
        r.max_sender[school] = senders[0].sent
        r.top_senders += senders[:cfg.top_senders]


def _failed_logins(cfg: WatchConfig, cur: psycopg.Cursor[Any], members: str, params: dict[str, Any],
                   now: float, r: WatchResult) -> None:
    p = cfg.db.prefix
    cur.execute(f"""
        SELECT COALESCE(m.code, CASE WHEN l.userid = 0 THEN %(unknown)s ELSE %(none)s END), l.ip, COUNT(*)
          FROM {p}logstore_standard_log l LEFT JOIN ({members}) m ON m.userid = l.userid
         WHERE l.timecreated >= %(since)s AND l.eventname = %(event)s
         GROUP BY 1, 2""",
                {**params, "since": int(now) - FAILED_LOGINS_WINDOW_S, "event": LOGIN_FAILED,
                 "unknown": UNKNOWN_USER, "none": NO_SCHOOL})
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for school, ip, n in cur.fetchall():
        counts[(str(school), source_class(str(ip or "")))] += int(n)
    for s in cfg.schools:
        counts.setdefault((s.code, "public"), 0)
    r.failed_logins = dict(counts)


def _ids(value: str | None) -> set[int]:
    return {int(x) for x in (value or "").split(",") if x.strip().isdigit()}


def _admins(cfg: WatchConfig, cur: psycopg.Cursor[Any], now: float, r: WatchResult) -> None:
    p = cfg.db.prefix
    current = _ids(_config(cur, p, "siteadmins"))
    r.site_admins = len(current)
    # admin/roles/admins.php logs every change of $CFG->siteadmins in config_log (old and
    # new lists). A change that bypasses it still shows in moodle_site_admins.
    cur.execute(f"SELECT value, oldvalue FROM {p}config_log WHERE name = 'siteadmins' "
                "AND (plugin IS NULL OR plugin = 'core') "
                "AND timemodified >= %s ORDER BY id", (int(now) - NEW_ROLES_WINDOW_S,))
    added: set[int] = set()
    for value, old in cur.fetchall():
        added |= _ids(value) - _ids(old)
    added &= current
    if added:
        cur.execute(f"SELECT username FROM {p}user WHERE id = ANY(%s) ORDER BY username", (sorted(added),))
        r.new_site_admins = [str(u) for (u,) in cur.fetchall()]


def _roles(cfg: WatchConfig, cur: psycopg.Cursor[Any], now: float, r: WatchResult) -> None:
    p = cfg.db.prefix
    if not cfg.watched_roles:
        return
    # The school of an assignment is the top-level category its context is under.
    cur.execute(f"SELECT ctx.id, cc.idnumber FROM {p}context ctx JOIN {p}course_categories cc "
                "ON cc.id = ctx.instanceid AND ctx.contextlevel = %s WHERE cc.parent = 0", (CONTEXT_COURSECAT,))
    by_category = {s.category_idnumber: s.code for s in cfg.schools}
    top_ctx = {int(cid): by_category.get(str(idn or ""), NO_SCHOOL) for cid, idn in cur.fetchall()}
    cur.execute(f"""
        SELECT r.shortname, ctx.contextlevel, ctx.path, COUNT(*)
          FROM {p}role_assignments ra JOIN {p}role r ON r.id = ra.roleid
          JOIN {p}context ctx ON ctx.id = ra.contextid
         WHERE r.shortname = ANY(%s) AND ra.timemodified >= %s
         GROUP BY 1, 2, 3""", (list(cfg.watched_roles), int(now) - NEW_ROLES_WINDOW_S))
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for role, level, path, n in cur.fetchall():
        parts = [x for x in str(path or "").split("/") if x]
        if int(level) == CONTEXT_SYSTEM:
            school = PLATFORM
        elif len(parts) >= 2 and parts[1].isdigit():
            school = top_ctx.get(int(parts[1]), NO_SCHOOL)
        else:
            school = NO_SCHOOL
        counts[(str(role), school)] += int(n)
    for role in cfg.watched_roles:
        counts.setdefault((role, PLATFORM), 0)
    r.new_roles = dict(counts)


FPM_FIELDS = ("accepted conn", "listen queue", "max listen queue", "idle processes", "active processes",
              "total processes", "max children reached", "slow requests", "start since")


def _fpm(cfg: WatchConfig, r: WatchResult) -> None:
    try:
        resp = requests.get(cfg.fpm_status_url, params={"json": ""}, timeout=5)
        resp.raise_for_status()
        doc = resp.json()
    except (requests.RequestException, json.JSONDecodeError) as exc:
        r.warnings.append(f"php-fpm status {cfg.fpm_status_url}: {_oneline(exc)}")
        return
    r.fpm = {k: float(doc[k]) for k in FPM_FIELDS if isinstance(doc.get(k), int | float)}
