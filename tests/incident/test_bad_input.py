"""Bad input: one clear line on stderr naming the bad value, exit 2 (3 for a
busy lock), and nothing changed in Moodle or in the journal."""

from __future__ import annotations

import pytest

from moodleops.cli import main
from moodleops.platform.lock import platform_lock

pytestmark = pytest.mark.stack


@pytest.fixture()
def unchanged(world):
    """Snapshot Moodle (our users) and the journal; assert both are untouched after the test."""
    rb = world.runbook()
    journal = rb.journal.path.read_text() if rb.journal.path.exists() else ""
    users = world.users_state()
    yield
    assert world.users_state() == users
    assert (rb.journal.path.read_text() if rb.journal.path.exists() else "") == journal


def _run(world, *args: str) -> list[str]:
    return [*world.cli_args(), "incident", *args]


WHY = ("--reason", "r", "--ticket", "T-1", "--apply")


@pytest.mark.parametrize("case, args, expected", [
    ("unknown school", ("suspend", "--school", "no_such_school", *WHY), "'no_such_school' is not valid"),
    ("unknown user", ("suspend", "--users", "{a1},nobody_{prefix}", *WHY), "unknown user(s) nobody_"),
    ("empty list", ("suspend", "--users", " , ", *WHY), "empty list"),
    ("no scope", ("suspend", *WHY), "no scope"),
    ("empty reason", ("suspend", "--users", "{a1}", "--reason", " ", "--ticket", "T", "--apply"), "--reason"),
    ("unknown incident", ("reinstate", "INC-20000101-000000-dead", "--apply"), "INC-20000101-000000-dead"),
    ("messaging unknown user", ("messaging", "suspend", "--users", "ghost_{prefix}", *WHY), "ghost_"),
    ("renewals bad school", ("expire", "--date", "2030-08-31", "--renewals", "nope=x.csv", *WHY), "unknown school"),
])
def test_bad_input_changes_nothing(world, unchanged, capsys, case, args, expected) -> None:
    subst = {"a1": world.username("a1"), "prefix": world.prefix}
    argv = _run(world, *(a.format(**subst) for a in args), "--journal-copy", str(world.journal_copy))
    assert main(argv) == 2, case
    err = capsys.readouterr().err.strip()
    assert err.startswith("moodleops: error:") and expected in err, err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("content, expected", [
    ("user\nfoo\n", "lacks column(s) username"),
    ("username\n", "no data rows"),
    ("username,x\nabc,1,2\n", "more fields than the header"),
    ("username\nAbc De\n", "is not valid"),
    ("", "lacks column(s) username"),
])
def test_malformed_csv_changes_nothing(world, unchanged, tmp_path, capsys, content, expected) -> None:
    f = tmp_path / "u.csv"
    f.write_text(content)
    assert main(_run(world, "suspend", "--users-csv", str(f), *WHY)) == 2
    err = capsys.readouterr().err
    assert str(f) in err and expected in err, err


def test_malformed_renewal_csv(world, unchanged, tmp_path, capsys) -> None:
    f = tmp_path / "r.csv"
    f.write_text(f"username,requested\n{world.username('e1')},31/08/2030\n")
    assert main(_run(world, "expire", "--date", "2030-08-31", "--renewals", f"{world.codes['a']}={f}", *WHY)) == 2
    assert "is not a date (expected YYYY-MM-DD)" in capsys.readouterr().err


def test_already_reinstated_incident(world, capsys) -> None:
    rb = world.runbook()
    from moodleops.incident.runbook import Who
    who = Who(reason="t", ticket="T")
    out = rb.run(rb.suspend(users=(world.username("b1"),)), apply=True, who=who)
    rb.run(rb.reinstate(out.incident), apply=True, who=who)
    state = world.users_state()
    assert main(_run(world, "reinstate", out.incident, "--apply")) == 2
    assert "already reinstated" in capsys.readouterr().err
    assert world.users_state() == state


def test_lock_busy_changes_nothing(world, unchanged, capsys) -> None:
    with platform_lock(world.site, "another runbook (test)"):
        assert main(_run(world, "suspend", "--users", world.username("b1"), *WHY,
                         "--journal-copy", str(world.journal_copy))) == 3
    err = capsys.readouterr().err
    assert "the platform lock is held by" in err and "another runbook (test)" in err and "since" in err


def test_tampered_journal_line_detected_by_verify(world, tmp_path, capsys) -> None:
    rb = world.runbook()
    assert main(_run(world, "verify", "--journal-copy", str(world.journal_copy))) == 0
    out = capsys.readouterr().out
    assert "OK" in out and str(rb.journal.path) in out
    # A copy with one line edited (a reinstated account turned into "not changed"): detected, line named.
    lines = rb.journal.path.read_text().splitlines()
    n = next(i for i, ln in enumerate(lines) if '"status": "changed"' in ln)
    lines[n] = lines[n].replace('"status": "changed"', '"status": "unchanged"', 1)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    assert main(_run(world, "verify", str(tampered), "--journal-copy", str(world.journal_copy))) == 6
    out = capsys.readouterr().out
    assert f"{tampered}:{n + 1}: record" in out and "altered" in out
    assert "differ from record" in out


def test_unexpected_error_has_its_own_exit_status(world, monkeypatch, capsys) -> None:
    from moodleops.incident.runbook import Runbook

    def boom(self, *a, **k):
        raise ZeroDivisionError("simulated bug")
    monkeypatch.setattr(Runbook, "run", boom)
    assert main(_run(world, "suspend", "--users", world.username("b1"), *WHY)) == 70
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: simulated bug" in err and "Traceback" not in err
