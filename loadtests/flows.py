"""Moodle 4.1 flows as a person runs them in a browser, each page checked for
what that person would see. A failed check marks the request as failed in
Locust's statistics (it counts in the error rate) and aborts the rest of the
session, as a person facing a broken page would stop.

Request names are the page types the SLOs of inventory/loadmodel.yml speak
of ("login:post", "quiz:page", "ajax:<methodname>"): dynamic URLs are grouped
by what the page is, not by ids. Checks look at structure (form actions, field
names, JSON keys, ids from the fixture) rather than English strings, so they
hold on a French site too.

Sources for the mechanics: /srv/moodle/current (login/index.php,
lib/ajax/service.php, mod/quiz/startattempt.php + processattempt.php,
mod/forum/post.php, mod/assign/view.php, repository/repository_ajax.php).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from moodleops.loadtests.forms import Form, find_form
from urllib3 import encode_multipart_formdata

SESSKEY = re.compile(r'"sesskey":"([^"]+)"')
LOGIN_TOKEN = re.compile(r'name="logintoken"\s+value="([^"]+)"')
UPLOAD_REPO = re.compile(r'"id":"(\d+)","name":"[^"]*","type":"upload"')
PAGE_CONTEXT = re.compile(r'"context":\{"id":(\d+),"contextlevel":70')
ATTEMPT_ID = re.compile(r"[?&]attempt=(\d+)")
# A Moodle form's validation error under a field (the form was shown again).
FORM_ERROR = re.compile(r'id="id_error_[^"]*"[^>]*>\s*([^<\s][^<]*)')
# Revisioned theme/JS URLs of a Moodle page head (cached by browsers for 90 days).
ASSET = re.compile(r'(?:href|src)="([^"]*/(?:theme/styles\.php|theme/yui_combo\.php|lib/javascript\.php)[^"]*)"')
# RequireJS base of the page: <base>core/first.js is every (non-lazy) AMD module in one response.
AMD_BASE = re.compile(r"baseUrl\s*:\s*'([^']*/lib/requirejs\.php/\d+/)'")
# Page timers as Moodle renders them: js_writer::function_call() json-encodes the
# arguments, and the autosave period is get_config()'s string, so the page says
# M.mod_quiz.autosave.init("60"); the keep-alive's period (sessiontimeout / 10)
# is a number. Either may come quoted or not.
AUTOSAVE_PERIOD = re.compile(r'M\.mod_quiz\.autosave\.init\(\s*\[?\s*"?(\d+)')
KEEPALIVE_PERIOD = re.compile(r'amd\.keepalive\(\s*"?(\d+(?:\.\d+)?)')

Check = Callable[[Any], str | None]


class FlowAborted(Exception):
    """A page was not what a person would see: the session stops here."""


@dataclass
class Account:
    username: str
    password: str


@dataclass
class Fixture:
    """Ids of what `moodleops loadtest prepare` created (from its JSON)."""

    course_id: int
    forum_cmid: int
    discussion_id: int
    discussion_post_id: int
    resource_cmid: int
    quiz_cmid: int
    quiz_questions: int
    assign_cmid: int

    @classmethod
    def of(cls, data: dict[str, Any]) -> Fixture:
        return cls(**{k: int(data[k]) for k in cls.__dataclass_fields__})


@dataclass
class Browser:
    """What a browser adds to the pages: the theme's CSS and JavaScript
    (combined YUI/AMD requests) fetched once when the cache is cold, never when
    warm (the URLs carry a revision and are immutable); `time_scale` compresses
    the page timers (autosave, keep-alive) like the think times."""

    cold: bool
    time_scale: float = 1.0
    cached: set[str] = field(default_factory=set)

    def assets(self, html: str) -> list[tuple[str, str]]:
        """(path, page type) of this page's assets the browser does not hold yet."""
        if not self.cold:
            return []
        found: list[tuple[str, str]] = []
        for url in ASSET.findall(html):
            kind = "static:css" if (".css" in url or "styles.php" in url) else "static:js"
            found.append((_path(url.replace("&amp;", "&")), kind))
        base = AMD_BASE.search(html)
        if base:
            found.append((_path(base.group(1)) + "core/first.js", "static:amd"))
        out = [(p, k) for p, k in found if p not in self.cached]
        self.cached.update(p for p, _ in out)
        return out


def _location(resp: Any) -> str:
    headers = resp.headers or {}
    loc = headers.get("location") or headers.get("Location") or ""
    return str(loc)


def _path(url: str) -> str:
    """Path + query of an absolute URL, so requests stay on the configured host."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class MoodleFlows:
    """The pages of one session. `client` is a Locust FastHttpSession; `think`
    is called between pages (the user's think time); `ok_status` codes are the
    only ones accepted (redirects are asked for explicitly where expected)."""

    def __init__(self, client: Any, fixture: Fixture, think: Callable[[], None],
                 browser: Browser | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.fx = fixture
        self.think = think
        self.browser = browser or Browser(cold=False)
        self.sleep = sleep
        self.sesskey = ""

    # -- plumbing ----------------------------------------------------------------

    def _request(self, method: str, path: str, name: str, check: Check, *,
                 expect: tuple[int, ...] = (200,), **kw: Any) -> Any:
        with self.client.request(method, path, name=name, catch_response=True, **kw) as resp:
            if resp.status_code not in expect:
                problem: str | None = f"HTTP {resp.status_code}, expected {'/'.join(map(str, expect))}"
                form_error = FORM_ERROR.search(resp.text or "") if resp.status_code == 200 else None
                if form_error:
                    problem += f" (the form says: {' '.join(form_error.group(1).split())[:120]})"
            else:
                try:
                    problem = check(resp)
                except Exception as exc:  # noqa: BLE001 - a malformed page is a failed check, not a crash
                    problem = f"unreadable response: {exc!r}"
            if problem:
                resp.failure(f"{name}: {problem}")
                raise FlowAborted(f"{name}: {problem}")
            resp.success()
        if method == "GET" and "text/html" in str((resp.headers or {}).get("content-type", "")):
            self._fetch_assets(resp.text or "")
        return resp

    def _fetch_assets(self, html: str) -> None:
        for path, kind in self.browser.assets(html):
            def is_asset(resp: Any) -> str | None:
                return None if resp.content else "empty asset"
            self._request("GET", path, kind, is_asset)

    @staticmethod
    def _contains(*needles: str) -> Check:
        def check(resp: Any) -> str | None:
            text = resp.text or ""
            missing = [n for n in needles if n not in text]
            return f"page lacks {missing!r}" if missing else None
        return check

    def _logged_in_page(self, *needles: str) -> Check:
        """A full page of a logged-in user: the session's sesskey and a logout link."""
        def check(resp: Any) -> str | None:
            text = resp.text or ""
            if "/login/index.php" in text and "logintoken" in text:
                return "landed on the login form (session lost)"
            if f'"sesskey":"{self.sesskey}"' not in text:
                return "page lacks this session's sesskey"
            missing = [n for n in needles if n not in text]
            return f"page lacks {missing!r}" if missing else None
        return check

    def _form_post(self, path: str, name: str, fields: list[tuple[str, str]], check: Check,
                   expect: tuple[int, ...] = (200,), allow_redirects: bool = True) -> Any:
        return self._request("POST", path, name, check, expect=expect, data=urlencode(fields),
                             headers={"Content-Type": "application/x-www-form-urlencoded"},
                             allow_redirects=allow_redirects)

    # -- login, dashboard, logout --------------------------------------------------

    def login(self, account: Account) -> None:
        token: list[str] = []

        def has_token(resp: Any) -> str | None:
            m = LOGIN_TOKEN.search(resp.text or "")
            if not m:
                return "no logintoken on the login form"
            token.append(m.group(1))
            return None

        self._request("GET", "/login/index.php", "login:form", has_token)
        self.think()

        def landed(resp: Any) -> str | None:
            text = resp.text or ""
            m = SESSKEY.search(text)
            if "loginerrormessage" in text or not m or "/login/logout.php?sesskey=" not in text:
                return f"login as {account.username} did not reach a logged-in page"
            self.sesskey = m.group(1)
            return None

        # Follows login/index.php -> ?testsession= -> /my/: what the person sees is the dashboard.
        self._form_post("/login/index.php", "login:post",
                        [("username", account.username), ("password", account.password),
                         ("logintoken", token[0])], landed)
        self.dashboard_ajax()

    def ajax(self, methodname: str, args: dict[str, Any], check: Callable[[Any], str | None]) -> Any:
        """One call through /lib/ajax/service.php, as core/ajax does."""
        body = json.dumps([{"index": 0, "methodname": methodname, "args": args}])
        result: list[Any] = []

        def ok(resp: Any) -> str | None:
            answer = json.loads(resp.text or "null")
            if not isinstance(answer, list) or not answer:
                return "not a JSON list"
            if answer[0].get("error"):
                exc = answer[0].get("exception") or {}
                return f"Moodle error {exc.get('errorcode')}: {exc.get('message')}"
            result.append(answer[0].get("data"))
            return check(answer[0].get("data"))

        self._request("POST", f"/lib/ajax/service.php?sesskey={self.sesskey}&info={methodname}",
                      f"ajax:{methodname}", ok, data=body,
                      headers={"Content-Type": "application/json", "Accept": "application/json"})
        return result[0]

    def dashboard_ajax(self) -> None:
        # block_timeline's first load: events from 14 days ago (blocks/timeline view.mustache).
        midnight = int(time.time()) // 86400 * 86400
        self.ajax("core_calendar_get_action_events_by_timesort",
                  {"limitnum": 6, "timesortfrom": midnight - 14 * 86400, "limittononsuspendedevents": True},
                  lambda d: None if isinstance(d, dict) and "events" in d else "no events list")

    def dashboard(self) -> None:
        self._request("GET", "/my/", "dashboard", self._logged_in_page('data-block="timeline"'))
        self.dashboard_ajax()

    def my_courses(self) -> None:
        self._request("GET", "/my/courses.php", "mycourses", self._logged_in_page('data-block="myoverview"'))

        def lists_course(d: Any) -> str | None:
            ids = [int(c.get("id", 0)) for c in (d or {}).get("courses", [])]
            return None if self.fx.course_id in ids else f"course {self.fx.course_id} not in the list {ids}"

        self.ajax("core_course_get_enrolled_courses_by_timeline_classification",
                  {"offset": 0, "limit": 0, "classification": "all", "sort": "fullname",
                   "customfieldname": "", "customfieldvalue": ""}, lists_course)

    def logout(self) -> None:
        def logged_out(resp: Any) -> str | None:
            return None if resp.status_code == 303 else "no redirect after logout"
        self._request("GET", f"/login/logout.php?sesskey={self.sesskey}", "logout", logged_out, expect=(303,),
                      allow_redirects=False)
        self.sesskey = ""

    # -- reading ------------------------------------------------------------------

    def course(self) -> None:
        fx = self.fx
        self._request("GET", f"/course/view.php?id={fx.course_id}", "course",
                      self._logged_in_page(f"/mod/forum/view.php?id={fx.forum_cmid}",
                                           f"/mod/quiz/view.php?id={fx.quiz_cmid}",
                                           f"/mod/assign/view.php?id={fx.assign_cmid}"))

    def download_resource(self) -> None:
        target: list[str] = []

        def redirects(resp: Any) -> str | None:
            loc = _location(resp)
            if "/pluginfile.php/" not in loc or "/mod_resource/content/" not in loc:
                return f"no redirect to the file (Location: {loc!r})"
            target.append(_path(loc))
            return None

        self._request("GET", f"/mod/resource/view.php?id={self.fx.resource_cmid}&redirect=1", "resource:view",
                      redirects, expect=(303,), allow_redirects=False)

        def is_file(resp: Any) -> str | None:
            ctype = str((resp.headers or {}).get("content-type", ""))
            if not resp.content or "text/html" in ctype:
                return f"not a file (content-type {ctype!r}, {len(resp.content or b'')} bytes)"
            return None

        self._request("GET", target[0], "resource", is_file)

    def forum_read(self) -> None:
        self._request("GET", f"/mod/forum/view.php?id={self.fx.forum_cmid}", "forum:view",
                      self._logged_in_page(f"discuss.php?d={self.fx.discussion_id}"))
        self.think()
        self._request("GET", f"/mod/forum/discuss.php?d={self.fx.discussion_id}", "forum:discuss",
                      self._logged_in_page(f'data-post-id="{self.fx.discussion_post_id}"'))

    def forum_post(self) -> str:
        """Reply to the discussion through the full form (post.php); returns the subject used."""
        forms: list[Form] = []

        def has_form(resp: Any) -> str | None:
            f = find_form(resp.text or "", action_contains="post.php", has_field="_qf__mod_forum_post_form")
            if f is None or f.value("sesskey") != self.sesskey:
                return "no reply form with this session's sesskey"
            forms.append(f)
            return None

        self._request("GET", f"/mod/forum/post.php?reply={self.fx.discussion_post_id}", "forum:replyform", has_form)
        self.think()
        subject = f"Re: question {uuid.uuid4().hex[:10]}"
        fields = forms[0].submission(button="submitbutton", overrides={
            "subject": subject, "message[text]": f"<p>{subject} : merci pour le support.</p>",
            "message[format]": "1"})
        self._form_post("/mod/forum/post.php", "forum:post", fields,
                        self._logged_in_page(subject))
        return subject

    # -- quiz -------------------------------------------------------------------------

    def quiz_attempt(self, question_think: Callable[[], float],
                     before_submit: Callable[[], None] | None = None) -> int:
        """View the quiz, start an attempt, answer every page (`question_think`:
        seconds spent on one, with the page's autosave and keep-alive running
        meanwhile), submit; returns the attempt id."""
        fx = self.fx
        start: list[Form] = []

        def has_start(resp: Any) -> str | None:
            f = find_form(resp.text or "", action_contains="/mod/quiz/startattempt.php")
            if f is None or f.value("cmid") != str(fx.quiz_cmid):
                return "no start-attempt button"
            start.append(f)
            return None

        self._request("GET", f"/mod/quiz/view.php?id={fx.quiz_cmid}", "quiz:view", has_start)
        self.think()
        attempt_url: list[str] = []

        def started(resp: Any) -> str | None:
            loc = _location(resp)
            if "/mod/quiz/attempt.php" not in loc or not ATTEMPT_ID.search(loc):
                return f"start did not lead to an attempt (Location: {loc!r})"
            attempt_url.append(_path(loc))
            return None

        # The synchronised click of an exam: POST startattempt.php -> 303 attempt.php.
        self._form_post("/mod/quiz/startattempt.php", "quiz:start", start[0].submission(), started,
                        expect=(303,), allow_redirects=False)
        attempt_id = int(ATTEMPT_ID.search(attempt_url[0]).group(1))  # type: ignore[union-attr]
        next_url = attempt_url[0]
        for _page in range(fx.quiz_questions + 1):
            page_form: list[Form] = []
            html: list[str] = []

            def has_questions(resp: Any, page_form: list[Form] = page_form, html: list[str] = html) -> str | None:
                f = find_form(resp.text or "", action_contains="/mod/quiz/processattempt.php",
                              has_field="slots")
                if f is None or f.value("attempt") != str(attempt_id):
                    return "no question form for this attempt"
                if not f.radios:
                    return "no answer to choose on the page"
                page_form.append(f)
                html.append(resp.text or "")
                return None

            self._request("GET", next_url, "quiz:page", has_questions)
            self._dwell_on_question(question_think(), page_form[0], html[0])
            after: list[str] = []

            def went_on(resp: Any, after: list[str] = after) -> str | None:
                loc = _location(resp)
                if "/mod/quiz/attempt.php" not in loc and "/mod/quiz/summary.php" not in loc:
                    return f"answer not accepted (Location: {loc!r})"
                after.append(_path(loc))
                return None

            self._form_post("/mod/quiz/processattempt.php", "quiz:answer",
                            page_form[0].submission(button="next"), went_on, expect=(303,),
                            allow_redirects=False)
            next_url = after[0]
            if "/mod/quiz/summary.php" in next_url:
                break
        else:
            raise FlowAborted(f"quiz:page: no summary after {fx.quiz_questions + 1} pages")

        finish: list[Form] = []

        def has_finish(resp: Any) -> str | None:
            f = find_form(resp.text or "", action_contains="/mod/quiz/processattempt.php",
                          has_field="finishattempt")
            if f is None:
                return "no submit-all-and-finish form on the summary"
            finish.append(f)
            return None

        self._request("GET", next_url, "quiz:summary", has_finish)
        if before_submit is not None:
            before_submit()

        def finished(resp: Any) -> str | None:
            loc = _location(resp)
            return None if "/mod/quiz/review.php" in loc else f"not sent to the review (Location: {loc!r})"

        self._form_post("/mod/quiz/processattempt.php", "quiz:submit", finish[0].submission(), finished,
                        expect=(303,), allow_redirects=False)
        self._request("GET", f"/mod/quiz/review.php?attempt={attempt_id}&cmid={fx.quiz_cmid}", "quiz:review",
                      self._logged_in_page(f"attempt={attempt_id}"))
        return attempt_id

    def _dwell_on_question(self, seconds: float, form: Form, html: str) -> None:
        """The person reads and answers for `seconds`; they pick the answer after
        a third of it, the page's autosave (M.mod_quiz.autosave, its period in
        the page) saves it that long after the change, and the keep-alive
        (core/network, sessiontimeout / 10) touches the session meanwhile.
        Both timers run in the plan's compressed time."""
        scale = self.browser.time_scale
        timers: list[tuple[float, str]] = []
        autosave = AUTOSAVE_PERIOD.search(html)
        if autosave and int(autosave.group(1)) > 0:
            timers.append((seconds / 3 + int(autosave.group(1)) * scale, "autosave"))
        keepalive = KEEPALIVE_PERIOD.search(html)
        if keepalive and float(keepalive.group(1)) > 0:
            step = float(keepalive.group(1)) * scale
            timers += [(step * k, "keepalive") for k in range(1, int(seconds / step) + 1)]
        done = 0.0
        for at, what in sorted(timers):
            if at >= seconds:
                break
            self.sleep(at - done)
            done = at
            if what == "autosave":
                def saved(resp: Any) -> str | None:
                    answer = json.loads(resp.text or "null")
                    return None if isinstance(answer, dict) and answer.get("status") == "OK" else \
                        f"autosave refused: {answer!r}"[:200]
                self._form_post("/mod/quiz/autosave.ajax.php", "quiz:autosave", form.submission(), saved)
            else:
                self.ajax("core_session_touch", {}, lambda d: None)
        self.sleep(max(0.0, seconds - done))

    # -- assignment --------------------------------------------------------------------

    def assign_view(self) -> None:
        self._request("GET", f"/mod/assign/view.php?id={self.fx.assign_cmid}", "assign:view",
                      self._logged_in_page('value="editsubmission"'))

    def assign_submit(self, content: bytes) -> None:
        """Edit submission, upload one file through the file picker's upload repository, save."""
        page: list[str] = []

        def has_form(resp: Any) -> str | None:
            text = resp.text or ""
            f = find_form(text, has_field="files_filemanager")
            if f is None or f.value("sesskey") != self.sesskey:
                return "no submission form with a file manager"
            page.append(text)
            forms.append(f)
            return None

        forms: list[Form] = []
        self._request("GET", f"/mod/assign/view.php?id={self.fx.assign_cmid}&action=editsubmission",
                      "assign:editsubmission", has_form)
        form, text = forms[0], page[0]
        repo = UPLOAD_REPO.search(text)
        ctx = PAGE_CONTEXT.search(text)
        if not repo or not ctx:
            raise FlowAborted("assign:editsubmission: no upload repository or context on the page")
        self.think()
        body, ctype = encode_multipart_formdata({
            "repo_upload_file": ("rapport-de-stage.txt", content, "text/plain"),
            "sesskey": self.sesskey, "repo_id": repo.group(1), "itemid": form.value("files_filemanager") or "",
            "ctx_id": ctx.group(1), "savepath": "/", "title": "rapport-de-stage.txt", "author": "Load test",
            "license": "allrightsreserved", "overwrite": "1",
        })

        def uploaded(resp: Any) -> str | None:
            answer = json.loads(resp.text or "null")
            if not isinstance(answer, dict) or "error" in answer:
                return f"upload refused: {answer!r}"[:200]
            return None

        self._request("POST", "/repository/repository_ajax.php?action=upload", "assign:upload", uploaded,
                      data=body, headers={"Content-Type": ctype})

        def saved(resp: Any) -> str | None:
            loc = _location(resp)
            # Saved: back to the status page (action=view); the form again means refused.
            ok = f"view.php?id={self.fx.assign_cmid}" in loc and "submission" not in loc.split("?", 1)[-1]
            return None if ok else f"submission not saved (Location: {loc!r})"

        self._form_post("/mod/assign/view.php", "assign:save", form.submission(button="submitbutton"), saved,
                        expect=(303,), allow_redirects=False)
        self.assign_view()

    # -- trainer pages -------------------------------------------------------------------

    def grading(self) -> None:
        self._request("GET", f"/mod/assign/view.php?id={self.fx.assign_cmid}&action=grading", "grading",
                      self._logged_in_page('gradingtable'))
        self.think()
        self._request("GET", f"/mod/quiz/report.php?id={self.fx.quiz_cmid}&mode=overview", "quiz:report",
                      self._logged_in_page('id="fitem_id_attempts"'))

    def participants(self) -> None:
        self._request("GET", f"/user/index.php?id={self.fx.course_id}", "participants",
                      self._logged_in_page('id="participants"'))
