"""Incident runbooks (hosting agreement art. 6.2): scoped, audited and exactly
reversible suspension of schools, users or the platform; messaging
suspension; expiry of hosted accounts on 31 August.

Planning, the write-ahead journal, holds and recovery are here; the
platform-wide lock is moodleops/platform/lock.py; every change to Moodle goes
through the PHP helper moodleops/php/incident.php, run as the web user."""

from moodleops.incident.errors import IncidentError, IncidentIncomplete, JournalError, LockBusy
from moodleops.incident.journal import Journal, new_incident_id
from moodleops.incident.runbook import Outcome, Runbook

__all__ = ["IncidentError", "IncidentIncomplete", "Journal", "JournalError", "LockBusy", "Outcome", "Runbook",
           "new_incident_id"]
