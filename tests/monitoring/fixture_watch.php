<?php
// Test fixture of tests/monitoring (watch exporter), THROUGH MOODLE only:
//   build:   a cohort standing for the test's own school, and its users
//   send:    N messages from one user to another with Moodle's messaging API
//            (message_send), as a mass-mailing trainer would
//   admin:   add (or remove) a user to the site administrators the way
//            admin/roles/admins.php does (set_config + add_to_config_log)
//   manager: assign (or unassign) the manager role in the system context
//   cleanup: the users and the cohort of this run
//   php fixture_watch.php /srv/moodle/current/config.php < payload.json
// Prints one line "MOODLEOPS-JSON: {...}".
define('CLI_SCRIPT', true);
define('NO_OUTPUT_BUFFERING', true);

require($argv[1]);
require_once($CFG->dirroot . '/cohort/lib.php');
require_once($CFG->dirroot . '/user/lib.php');

$in = json_decode(stream_get_contents(STDIN), true);
\core\session\manager::set_user(get_admin());

function done(array $out): void {
    echo 'MOODLEOPS-JSON: ' . json_encode($out) . "\n";
    exit(0);
}

if ($in['action'] === 'cleanup') {
    foreach ($in['users'] as $username) {
        if ($user = $DB->get_record('user', ['username' => $username, 'deleted' => 0])) {
            $admins = array_filter(explode(',', $CFG->siteadmins));
            if (in_array($user->id, $admins)) {
                $kept = array_diff($admins, [$user->id]);
                set_config('siteadmins', implode(',', $kept));
                add_to_config_log('siteadmins', implode(', ', $admins), implode(', ', $kept), 'core');
            }
            delete_user($user);
        }
    }
    if ($cohort = $DB->get_record('cohort', ['idnumber' => $in['cohort']])) {
        cohort_delete_cohort($cohort);
    }
    done(['ok' => true]);
}

if ($in['action'] === 'build') {
    $cohortid = cohort_add_cohort((object)['contextid' => context_system::instance()->id,
        'name' => 'Watch test ' . $in['cohort'], 'idnumber' => $in['cohort'], 'component' => '']);
    $ids = [];
    foreach ($in['users'] as $u) {
        $id = user_create_user((object)['username' => $u['username'], 'password' => $u['password'],
            'firstname' => 'Watch', 'lastname' => $u['username'], 'email' => $u['username'] . '@example.invalid',
            'auth' => 'manual', 'confirmed' => 1, 'mnethostid' => $CFG->mnet_localhost_id], true, false);
        cohort_add_member($cohortid, $id);
        $ids[$u['username']] = (int)$id;
    }
    done(['cohortid' => (int)$cohortid, 'users' => $ids]);
}

if ($in['action'] === 'admin') {
    $user = $DB->get_record('user', ['username' => $in['username'], 'deleted' => 0], '*', MUST_EXIST);
    $old = array_filter(explode(',', $CFG->siteadmins));
    $new = $in['add'] ? array_unique(array_merge($old, [$user->id])) : array_diff($old, [$user->id]);
    set_config('siteadmins', implode(',', $new));
    add_to_config_log('siteadmins', implode(', ', $old), implode(', ', $new), 'core');
    done(['siteadmins' => array_values(array_map('intval', $new))]);
}

if ($in['action'] === 'manager') {
    $user = $DB->get_record('user', ['username' => $in['username'], 'deleted' => 0], '*', MUST_EXIST);
    $role = $DB->get_record('role', ['shortname' => 'manager'], '*', MUST_EXIST);
    $ctx = context_system::instance();
    if ($in['add']) {
        role_assign($role->id, $user->id, $ctx->id);
    } else {
        role_unassign($role->id, $user->id, $ctx->id);
    }
    done(['ok' => true]);
}

if ($in['action'] === 'send') {
    $from = $DB->get_record('user', ['username' => $in['from'], 'deleted' => 0], '*', MUST_EXIST);
    $to = $DB->get_record('user', ['username' => $in['to'], 'deleted' => 0], '*', MUST_EXIST);
    // The recipient reads on the web only: no e-mail leaves the test machine.
    set_user_preference('message_provider_moodle_instantmessage_enabled', 'popup', $to);
    $sent = 0;
    for ($i = 0; $i < (int)$in['count']; $i++) {
        $m = new \core\message\message();
        $m->component = 'moodle';
        $m->name = 'instantmessage';
        $m->userfrom = $from;
        $m->userto = $to;
        $m->subject = 'Watch test ' . $i;
        $m->fullmessage = 'Mass mailing test message ' . $i;
        $m->fullmessageformat = FORMAT_PLAIN;
        $m->fullmessagehtml = '';
        $m->smallmessage = 'Mass mailing test message ' . $i;
        $m->notification = 0;
        $m->courseid = SITEID;
        if (message_send($m)) {
            $sent++;
        }
    }
    done(['sent' => $sent]);
}
fwrite(STDERR, "unknown action\n");
exit(1);
