"""The schools of a firing alert as the scope of `incident suspend`, from a real
Alertmanager on loopback, against the real stack: dry run first (nothing
changes), then --apply suspends exactly that school's members, and the incident
is reinstated exactly."""

from __future__ import annotations

import pytest
from prom_loopback import post_alerts, running_alertmanager, wait_active

from moodleops.cli import main
from moodleops.incident.runbook import Who

pytestmark = pytest.mark.stack


def test_suspend_takes_the_school_of_a_firing_alert(world, tmp_path, capsys) -> None:
    school_a = world.codes["a"]
    burst = {"alertname": "MoodleFailedLoginBurst", "scope": "security", "severity": "critical"}
    with running_alertmanager(world.inv, tmp_path / "am") as am:
        # As Prometheus sends it for the school, and for failed logins on usernames Moodle lacks.
        post_alerts(am, {"labels": {**burst, "school": school_a}}, {"labels": {**burst, "school": "unknown"}})
        assert len(wait_active(am, "MoodleFailedLoginBurst")) == 2
        argv = [*world.cli_args(), "incident", "suspend", "--school-from-alert", "MoodleFailedLoginBurst",
                "--alertmanager", am, "--reason", "test: failed-login burst", "--ticket", "TEST-ALERT",
                "--journal-copy", str(world.journal_copy)]
        before = world.users_state()
        assert main(argv) == 0
        dry = capsys.readouterr()
        assert "dry run" in dry.out and school_a in dry.out, dry.out
        assert "MoodleFailedLoginBurst also fires for unknown: no school, left out" in dry.err, dry.err
        assert world.users_state() == before, "the dry run changed something"
        for short in ("a1", "a2", "a4"):
            assert world.username(short) in dry.out, (short, dry.out)
        for short in ("b1", "b2"):
            assert world.username(short) not in dry.out, (short, dry.out)

        assert main([*argv, "--apply"]) == 0
        applied = capsys.readouterr().out
    after = world.users_state()
    assert after["a1"]["suspended"] == 1 and after["a2"]["suspended"] == 1
    assert after["b1"]["suspended"] == 0 and after["ab"]["suspended"] == 0   # other school, two schools
    incident = next(w for w in applied.split() if w.startswith("INC-"))
    rb = world.runbook()
    back = rb.run(rb.reinstate(incident), apply=True,
                  who=Who(reason="test: undo", ticket="TEST-ALERT", operator="pytest"))
    assert not back.drift
    assert {k: v["suspended"] for k, v in world.users_state().items()} == \
        {k: v["suspended"] for k, v in before.items()}
