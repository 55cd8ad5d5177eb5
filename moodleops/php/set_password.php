<?php
// Set a local account's password through Moodle (update_internal_user_password),
// reading it from stdin so that it never appears on a command line. Run at
// every provisioning, so the inventory's password wins over a hand change.
//   php set_password.php /srv/moodle/current/config.php [--dry-run] < {"username": "admin", "password": "..."}
// --dry-run (Ansible's check mode): say whether it would change, change nothing.
// stdout: MOODLEOPS-JSON: {"changed": bool}
require(__DIR__ . '/_bootstrap.php');

$request = moodleops_request('password');
$user = $DB->get_record('user', ['username' => (string)($request['username'] ?? ''),
    'mnethostid' => $CFG->mnet_localhost_id, 'deleted' => 0]);
if (!$user) {
    fwrite(STDERR, "no local account named " . ($request['username'] ?? '') . "\n");
    exit(2);
}
$changed = !validate_internal_user_password($user, (string)$request['password']);
if ($changed && !in_array('--dry-run', array_slice($argv, 2), true)) {
    update_internal_user_password($user, (string)$request['password']);
}
moodleops_reply(['changed' => $changed]);
