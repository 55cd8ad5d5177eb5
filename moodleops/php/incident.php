<?php
// Incident runbooks' hands inside Moodle: read the state of users, categories,
// the messaging block and maintenance mode; apply a list of exact changes
// through Moodle's API (user_update_user + kill_user_sessions,
// core_course_category::hide/show, role_assign/role_unassign, maintenance), so
// that events are logged, caches purged and sessions ended.
//   php incident.php /srv/moodle/current/config.php < request.json
// stdin: {"action": "read", ...} or {"action": "apply", "changes": [...], "dry_run": bool, "force": bool}
//        or {"action": "state", "objects": [{kind, id}, ...]}
// stdout: one line "MOODLEOPS-JSON: {...}"; an apply first prints one line
// "MOODLEOPS-ACK: {...}" per chunk once the chunk is applied (the Python side
// journals it). Planning and the journal live in Python (moodleops/incident);
// this script reads and applies, one process for the whole batch, holding the
// platform writer lock (moodleops/platform/lock.py) while it applies.
require(__DIR__ . '/_bootstrap.php');
require_once($CFG->dirroot . '/user/lib.php');
require_once($CFG->libdir . '/adminlib.php');
require_once($CFG->libdir . '/accesslib.php');
require_once($CFG->dirroot . '/webservice/lib.php');

const NOMESSAGING_ROLE = 'moodleops_nomessaging';
// Version of the apply exchange with moodleops/incident/helper.py (chunk acks + writer lock).
const MOODLEOPS_INCIDENT_PROTOCOL = 2;

$request = moodleops_request('action');
// Events and logs name the admin as the actor, as for the admin CLI scripts.
\core\session\manager::set_user(get_admin());

/** Ids of a list, as ints, never empty (so IN () is always valid SQL). */
function moodleops_ids(array $ids): array {
    $ids = array_values(array_unique(array_map('intval', $ids)));
    return $ids ?: [0];
}

function moodleops_nomessaging_role(): ?int {
    global $DB;
    $id = $DB->get_field('role', 'id', ['shortname' => NOMESSAGING_ROLE]);
    return $id === false ? null : (int)$id;
}

/** The messaging-block role, created on first use: system level only, prohibits moodle/site:sendmessage. */
function moodleops_ensure_nomessaging_role(): int {
    $syscontext = context_system::instance();
    $roleid = moodleops_nomessaging_role();
    if ($roleid === null) {
        $roleid = create_role('Messaging suspended (moodleops)', NOMESSAGING_ROLE,
            'Assigned by the moodleops incident runbooks to stop a user sending messages (spam). '
            . 'Remove it with `moodleops incident messaging reinstate`.', '');
        set_role_contextlevels($roleid, [CONTEXT_SYSTEM]);
    }
    // Re-asserted every time: a hand edit of the role must not silently re-open messaging.
    assign_capability('moodle/site:sendmessage', CAP_PROHIBIT, $roleid, $syscontext->id, true);
    return $roleid;
}

/**
 * School membership as the request carries it: moodleops.membership (Python,
 * read-only SQL) is the one definition every reader uses, so this helper does
 * not compute it. Returns [code => [problem, members]], [user id => codes].
 */
function moodleops_memberships(array $memberships): array {
    $found = [];
    $codes = [];
    foreach ($memberships as $code => $m) {
        $members = array_map('intval', $m['members'] ?? []);
        $found[$code] = ['problem' => $m['problem'] ?? null, 'members' => $members];
        foreach ($members as $uid) {
            $codes[$uid][] = $code;
        }
    }
    return [$found, $codes];
}

function moodleops_user_rows(array $ids, array $schoolsof, string $typefield): array {
    global $DB, $CFG;
    $ids = moodleops_ids($ids);
    [$insql, $params] = $DB->get_in_or_equal($ids);
    $users = $DB->get_records_select('user', "id $insql AND deleted = 0", $params, 'id',
        'id, username, suspended, auth, timemodified');
    $types = [];
    $fieldid = $DB->get_field('user_info_field', 'id', ['shortname' => $typefield]);
    if ($fieldid !== false) {
        [$insql2, $params2] = $DB->get_in_or_equal($ids);
        foreach ($DB->get_records_select('user_info_data', "fieldid = ? AND userid $insql2",
                array_merge([$fieldid], $params2), '', 'userid, data') as $row) {
            $types[(int)$row->userid] = $row->data;
        }
    }
    $blocked = [];
    $roleid = moodleops_nomessaging_role();
    if ($roleid !== null) {
        [$insql3, $params3] = $DB->get_in_or_equal($ids);
        $blocked = array_flip(array_map('intval', $DB->get_fieldset_select('role_assignments', 'userid',
            "roleid = ? AND contextid = ? AND userid $insql3",
            array_merge([$roleid, context_system::instance()->id], $params3))));
    }
    [$insql4, $params4] = $DB->get_in_or_equal($ids);
    $tokens = $DB->get_records_sql_menu("SELECT userid, COUNT(1) FROM {external_tokens}
                                          WHERE userid $insql4 GROUP BY userid", $params4);
    $admins = array_flip(array_map('intval', explode(',', $CFG->siteadmins)));
    $out = [];
    foreach ($users as $u) {
        $id = (int)$u->id;
        $out[] = [
            'id' => $id,
            'username' => $u->username,
            'suspended' => (int)$u->suspended,
            'auth' => $u->auth,
            'timemodified' => (int)$u->timemodified,
            'siteadmin' => isset($admins[$id]),
            'guest' => $id === (int)$CFG->siteguest,
            'account_type' => $types[$id] ?? null,
            'messaging_blocked' => isset($blocked[$id]),
            'schools' => $schoolsof[$id] ?? [],
            'tokens' => (int)($tokens[$id] ?? 0),
        ];
    }
    return $out;
}

function moodleops_category_row(string $idnumber): ?array {
    global $DB;
    $c = $DB->get_record('course_categories', ['idnumber' => $idnumber], 'id, idnumber, visible, timemodified');
    return $c ? ['id' => (int)$c->id, 'idnumber' => $c->idnumber, 'visible' => (int)$c->visible,
        'timemodified' => (int)$c->timemodified] : null;
}

function moodleops_platform_state(): array {
    global $CFG;
    return [
        'cli_maintenance' => file_exists($CFG->dataroot . '/climaintenance.html'),
        // The web maintenance switch (Site administration > Server > Maintenance mode), apart from CLI's.
        'maintenance_enabled' => (int)get_config('core', 'maintenance_enabled'),
        'maintenance_message' => (string)(get_config('core', 'maintenance_message') ?: ''),
    ];
}

function moodleops_read(array $r): array {
    global $DB;
    $typefield = $r['account_type_field'] ?? '';
    [$schools, $schoolsof] = moodleops_memberships($r['memberships'] ?? []);
    $wanted = [];
    foreach ($r['expand_schools'] ?? [] as $code) {
        foreach ($schools[$code]['members'] ?? [] as $uid) {
            $wanted[$uid] = true;
        }
    }
    $missing = [];
    foreach (array_chunk(array_values(array_unique($r['usernames'] ?? [])), 500) as $chunk) {
        [$insql, $params] = $DB->get_in_or_equal($chunk);
        $byname = $DB->get_records_select_menu('user', "username $insql AND deleted = 0", $params, '', 'username, id');
        foreach ($chunk as $name) {
            if (isset($byname[$name])) {
                $wanted[(int)$byname[$name]] = true;
            } else {
                $missing[] = $name;
            }
        }
    }
    foreach ($r['userids'] ?? [] as $uid) {
        $wanted[(int)$uid] = true;
    }
    if (!empty($r['hosted_types']) && $typefield !== '') {
        // Every account whose type is a hosted one (expiry).
        $fieldid = $DB->get_field('user_info_field', 'id', ['shortname' => $typefield]);
        if ($fieldid !== false) {
            [$insql, $params] = $DB->get_in_or_equal($r['hosted_types']);
            foreach ($DB->get_fieldset_select('user_info_data', 'userid', "fieldid = ? AND data $insql",
                    array_merge([$fieldid], $params)) as $uid) {
                $wanted[(int)$uid] = true;
            }
        }
    }
    $users = [];
    foreach (array_chunk(array_keys($wanted), 1000) as $chunk) {
        $users = array_merge($users, moodleops_user_rows($chunk, $schoolsof, $typefield));
    }
    $categories = [];
    foreach ($r['categories'] ?? [] as $idnumber) {
        $categories[$idnumber] = moodleops_category_row($idnumber);
    }
    $schoolsout = [];
    foreach ($schools as $code => $s) {
        $schoolsout[$code] = ['problem' => $s['problem'], 'count' => count($s['members'])];
    }
    return [
        'users' => $users,
        'missing_usernames' => $missing,
        'schools' => $schoolsout,
        'categories' => $categories,
        'platform' => moodleops_platform_state(),
        'account_type_field_exists' => $typefield !== ''
            && $DB->record_exists('user_info_field', ['shortname' => $typefield]),
        'nomessaging_role' => moodleops_nomessaging_role(),
    ];
}

/** Current state of one object, in the same shape the journal records. */
function moodleops_state_of(array $c): ?array {
    global $DB;
    switch ($c['kind']) {
        case 'user_suspended':
            $u = $DB->get_record('user', ['id' => $c['id'], 'deleted' => 0], 'id, suspended, timemodified');
            return $u ? ['suspended' => (int)$u->suspended, 'timemodified' => (int)$u->timemodified] : null;
        case 'category_visible':
            $cat = $DB->get_record('course_categories', ['id' => $c['id']], 'id, visible');
            return $cat ? ['visible' => (int)$cat->visible] : null;
        case 'messaging_blocked':
            if (!$DB->record_exists('user', ['id' => $c['id'], 'deleted' => 0])) {
                return null;
            }
            $roleid = moodleops_nomessaging_role();
            $blocked = $roleid !== null && $DB->record_exists('role_assignments',
                ['roleid' => $roleid, 'userid' => $c['id'], 'contextid' => context_system::instance()->id]);
            return ['blocked' => $blocked ? 1 : 0];
        case 'platform_maintenance':
            $p = moodleops_platform_state();
            return ['cli_maintenance' => $p['cli_maintenance'] ? 1 : 0,
                'maintenance_enabled' => $p['maintenance_enabled'], 'maintenance_message' => $p['maintenance_message']];
        case 'ws_tokens':
            if (!$DB->record_exists('user', ['id' => $c['id'], 'deleted' => 0])) {
                return null;
            }
            return ['count' => $DB->count_records('external_tokens', ['userid' => $c['id']])];
    }
    throw new coding_exception('unknown change kind ' . $c['kind']);
}

/** Does the current state still match what the change expects? Only the keys given in expect count. */
function moodleops_matches(?array $state, array $expect): bool {
    if ($state === null) {
        return false;
    }
    foreach ($expect as $k => $v) {
        if (!array_key_exists($k, $state) || $state[$k] != $v) {
            return false;
        }
    }
    return true;
}

function moodleops_do(array $c): void {
    global $CFG;
    $to = $c['to'];
    switch ($c['kind']) {
        case 'user_suspended':
            user_update_user((object)['id' => (int)$c['id'], 'suspended' => (int)$to['suspended']], false, true);
            if ((int)$to['suspended'] === 1) {
                // user_update_user does not end sessions; the admin UI and web service do it the same way.
                \core\session\manager::kill_user_sessions((int)$c['id']);
            }
            return;
        case 'category_visible':
            $cat = core_course_category::get((int)$c['id'], MUST_EXIST, true);
            if ((int)$to['visible'] === 1) {
                $cat->show();
            } else {
                $cat->hide();
            }
            return;
        case 'messaging_blocked':
            $syscontext = context_system::instance();
            if ((int)$to['blocked'] === 1) {
                role_assign(moodleops_ensure_nomessaging_role(), (int)$c['id'], $syscontext->id);
            } else if (($roleid = moodleops_nomessaging_role()) !== null) {
                role_unassign($roleid, (int)$c['id'], $syscontext->id);
            }
            return;
        case 'platform_maintenance':
            if (array_key_exists('maintenance_message', $to)) {
                set_config('maintenance_message', $to['maintenance_message'] === '' ? null : $to['maintenance_message']);
            }
            if (array_key_exists('maintenance_enabled', $to)) {
                set_config('maintenance_enabled', (int)$to['maintenance_enabled']);
            }
            if ((int)$to['cli_maintenance'] === 1) {
                enable_cli_maintenance_mode();   // writes climaintenance.html with the message
            } else if (file_exists("$CFG->dataroot/climaintenance.html")) {
                unlink("$CFG->dataroot/climaintenance.html");
            }
            return;
        case 'ws_tokens':
            if ((int)$to['count'] === 0) {
                webservice::delete_user_ws_tokens((int)$c['id']);
                return;
            }
            throw new coding_exception('web-service tokens can only be revoked');
    }
    throw new coding_exception('unknown change kind ' . $c['kind']);
}

/** One change, checked against `expect` first; the result in the journal's shape. */
function moodleops_apply_one(array $c, bool $dryrun, bool $force): array {
    $before = moodleops_state_of($c);
    $res = ['kind' => $c['kind'], 'id' => $c['id'] ?? null, 'before' => $before];
    if ($before === null) {
        $res['status'] = 'gone';
    } else if (!empty($c['expect']) && !moodleops_matches($before, $c['expect']) && !$force) {
        // Changed since it was recorded (a hand edit): left as is, reported.
        $res['status'] = 'drift';
    } else if (moodleops_matches($before, $c['to'])) {
        $res['status'] = 'unchanged';
    } else {
        $res['status'] = $dryrun ? 'would_change' : 'changed';
        if (!$dryrun) {
            moodleops_do($c);
        }
    }
    $res['after'] = $dryrun ? null : moodleops_state_of($c);
    return $res;
}

/**
 * The platform writer lock (moodleops/platform/lock.py): held by this process's
 * own database session for as long as it applies, so that killing the Python
 * side does not free the platform while we still write. Also checks that the
 * platform key is held by the session that started us (else we were orphaned).
 */
function moodleops_take_writer_lock(array $lock): void {
    global $DB;
    if ($DB->get_dbfamily() !== 'postgres') {
        throw new moodle_exception('generalexceptionmessage', 'error', '', 'the platform lock needs PostgreSQL');
    }
    $DB->execute("SELECT set_config('application_name', ?, false)",
        [substr('moodleops php pid ' . getmypid() . ': applying ' . ($lock['what'] ?? ''), 0, 63)]);
    if (!$DB->get_field_sql('SELECT pg_try_advisory_lock(?, ?)', [$lock['class'], $lock['writer']])) {
        fwrite(STDERR, "another Moodle writer holds the platform writer lock; nothing changed\n");
        exit(3);
    }
    if (!moodleops_caller_holds_platform($lock)) {
        fwrite(STDERR, "the runbook that started this helper no longer holds the platform lock; nothing changed\n");
        exit(3);
    }
}

function moodleops_caller_holds_platform(array $lock): bool {
    global $DB;
    return $DB->record_exists_sql("SELECT 1 FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND classid = ? AND objid = ? AND objsubid = 2 AND pid = ?
          AND database = (SELECT oid FROM pg_database WHERE datname = ?)",
        [$lock['class'], $lock['platform'], $lock['holder_backend'], $lock['platform_db']]);
}

/** Test fault injection: stop here (marker file written) until killed. */
function moodleops_stall(?array $fault, string $point): void {
    if ($fault && ($fault['point'] ?? '') === $point) {
        file_put_contents($fault['marker'], $point . "\n");
        sleep(600);
        exit(9);
    }
}

/**
 * Apply changes in order, in chunks; after each chunk one ack line with its
 * results. Each change: {kind, id, to: {...}, expect: {...}}. A change whose
 * object no longer matches `expect` is drift: left as is unless force (checked
 * first: a hand edit is reported even when it already reached `to`). A change
 * whose object is already at `to` is `unchanged`.
 */
function moodleops_apply(array $r): array {
    $dryrun = !empty($r['dry_run']);
    $force = !empty($r['force']);
    $changes = $r['changes'] ?? [];
    if ($dryrun) {
        return ['results' => array_map(fn($c) => moodleops_apply_one($c, true, $force), $changes), 'dry_run' => true];
    }
    $fault = $r['fault'] ?? null;
    moodleops_take_writer_lock($r['lock']);
    $size = max(1, (int)($r['chunk_size'] ?? 200));
    $n = 0;
    foreach (array_chunk($changes, $size) as $i => $chunk) {
        if ($i > 0 && !moodleops_caller_holds_platform($r['lock'])) {
            // Nobody journals our acks any more: stop at a chunk boundary, recover takes it from here.
            fwrite(STDERR, "the runbook was stopped: applied $n change(s), the rest left to `incident recover`\n");
            exit(3);
        }
        $results = [];
        foreach ($chunk as $j => $c) {
            if ($i === 1 && $j === intdiv(count($chunk), 2)) {
                moodleops_stall($fault, 'mid-chunk');
            }
            $results[] = moodleops_apply_one($c, false, $force);
            $n++;
        }
        echo 'MOODLEOPS-ACK: ' . json_encode(['chunk' => $i, 'results' => $results]) . "\n";
        fflush(STDOUT);
    }
    return ['applied' => $n, 'dry_run' => false, 'protocol' => MOODLEOPS_INCIDENT_PROTOCOL];
}

function moodleops_states(array $r): array {
    return ['states' => array_map('moodleops_state_of', $r['objects'] ?? [])];
}

switch ($request['action']) {
    case 'read':
        $out = moodleops_read($request);
        break;
    case 'apply':
        $out = moodleops_apply($request);
        break;
    case 'state':
        $out = moodleops_states($request);
        break;
    default:
        fwrite(STDERR, "unknown action {$request['action']} (allowed: read, apply, state)\n");
        exit(2);
}
moodleops_reply($out);
