"""Incident runbooks (hosting agreement art. 6.2): scoped, audited and exactly
reversible suspension of schools, users or the platform; messaging
suspension; expiry of hosted accounts on 31 August.

Planning, locking and the journal are here; every change to Moodle goes
through the PHP helper moodleops/php/incident.php, run as the web user."""

from moodleops.incident.errors import IncidentError, LockBusy
from moodleops.incident.journal import Journal, RunbookLock, new_incident_id
from moodleops.incident.runbook import Outcome, Runbook

__all__ = ["IncidentError", "Journal", "LockBusy", "Outcome", "Runbook", "RunbookLock", "new_incident_id"]
