#!/bin/sh
# Moodle cron, once per interval, for hosts without systemd or a cron daemon.
# Supervised (restarted if it dies); a failed run is logged and the loop goes on,
# because the next minute's run is the retry.
#   moodle-cron-loop.sh PHP_BINARY MOODLE_DIR INTERVAL_SECONDS
set -u
php=$1
moodle=$2
interval=$3
while :; do
    started=$(date +%s)
    "$php" "$moodle/admin/cli/cron.php" || echo "moodle-cron: cron.php exited $? at $(date -u +%FT%TZ)" >&2
    elapsed=$(( $(date +%s) - started ))
    [ "$elapsed" -lt "$interval" ] && sleep $(( interval - elapsed ))
done
