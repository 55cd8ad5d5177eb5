"""The production topology rehearsed as LXC system containers on this machine
(`moodleops rehearsal up | status | down`, docs/rehearsal.md)."""
