<?php
// Test fixture for the incident runbooks: builds (and tears down) its own
// schools and users THROUGH MOODLE (core_course_category, cohort API, the
// testing data generator, profile_save_data), so the tests never touch the
// real schools' cohorts. Run by MoodleCLI.tool with a JSON payload.
//   {"action": "setup", "schools": [...], "users": [...], "account_type_field": "..."}
//   {"action": "hand_edit", "userid": N, "fields": {...}}
//   {"action": "token", "userid": N}
//   {"action": "cleanup", "userids": [...], "categoryids": [...]}
require(__DIR__ . '/../moodle_fixture.php');

$r = moodleops_request('action');

/** The account-type field of platform.yml; created (text field) if the site lacks it. */
function fixture_ensure_field(string $shortname): void {
    global $DB;
    if ($DB->record_exists('user_info_field', ['shortname' => $shortname])) {
        return;
    }
    $catid = $DB->get_field('user_info_category', 'id', ['name' => 'UT accounts']);
    if (!$catid) {
        $cat = (object)['name' => 'UT accounts'];
        profile_save_category($cat);
        $catid = $cat->id;
    }
    profile_save_field((object)[
        'datatype' => 'text', 'shortname' => $shortname, 'name' => 'UT account type',
        'categoryid' => $catid, 'description' => ['text' => '', 'format' => FORMAT_HTML],
        'defaultdata' => '', 'required' => 0, 'locked' => 1, 'visible' => 0, 'forceunique' => 0,
        'signup' => 0, 'param1' => 30, 'param2' => 64, 'param3' => 0, 'param4' => '', 'param5' => '',
    ], []);
}

$out = [];
switch ($r['action']) {
    case 'setup':
        $gen = new testing_data_generator();
        fixture_ensure_field($r['account_type_field']);
        $schools = [];
        foreach ($r['schools'] as $s) {
            // A school the site already has (the rehearsal's, made by the moodle role) is used as it is.
            $catid = $DB->get_field('course_categories', 'id', ['idnumber' => $s['category_idnumber']]);
            if (!$catid) {
                $catid = core_course_category::create(['name' => $s['name'], 'idnumber' => $s['category_idnumber'],
                    'parent' => 0])->id;
            }
            $cohortid = $DB->get_field('cohort', 'id', ['idnumber' => $s['cohort_idnumber']]);
            if (!$cohortid) {
                $cohortid = cohort_add_cohort((object)['contextid' => context_coursecat::instance($catid)->id,
                    'name' => $s['name'], 'idnumber' => $s['cohort_idnumber'], 'component' => '']);
            }
            $schools[$s['code']] = ['category_id' => (int)$catid, 'cohort_id' => (int)$cohortid];
        }
        // One course in the first school, every test user enrolled: course members may message each other.
        $first = reset($schools);
        $withcourse = $r['with_course'] ?? true;
        $course = $withcourse ? $gen->create_course(['category' => $first['category_id'],
            'shortname' => $r['prefix'] . '-course', 'fullname' => $r['prefix'] . ' course']) : null;
        $users = [];
        foreach ($r['users'] as $u) {
            // No password (benchmark): skips the deliberately slow password hashing.
            $record = ['username' => $u['username'], 'firstname' => 'Test', 'lastname' => $u['username'],
                'email' => $u['username'] . '@example.invalid'];
            if (!empty($r['password'])) {
                $record['password'] = $r['password'];
            }
            $user = $gen->create_user($record);
            if (!empty($u['account_type'])) {
                $user->{'profile_field_' . $r['account_type_field']} = $u['account_type'];
                profile_save_data($user);
            }
            foreach ($u['schools'] as $code) {
                cohort_add_member($schools[$code]['cohort_id'], $user->id);
            }
            if ($course) {
                $gen->enrol_user($user->id, $course->id, 'student');
            }
            if (!empty($u['suspended'])) {
                user_update_user((object)['id' => $user->id, 'suspended' => 1], false);
            }
            $users[$u['username']] = (int)$user->id;
        }
        $out = ['schools' => $schools, 'users' => $users, 'course_id' => $course ? (int)$course->id : null];
        break;
    case 'hand_edit':
        // What an administrator does in the user edit form.
        user_update_user((object)(['id' => (int)$r['userid']] + $r['fields']), false);
        break;
    case 'token':
        // A permanent web-service token for the mobile app service, as a user gets from the app.
        require_once($CFG->libdir . '/externallib.php');
        $serviceid = $DB->get_field('external_services', 'id', ['shortname' => 'moodle_mobile_app'], MUST_EXIST);
        $out = ['token' => external_generate_token(EXTERNAL_TOKEN_PERMANENT, $serviceid, (int)$r['userid'],
            context_system::instance())];
        break;
    case 'cleanup':
        foreach ($r['userids'] as $id) {
            if ($user = $DB->get_record('user', ['id' => $id, 'deleted' => 0])) {
                delete_user($user);
            }
        }
        foreach ($r['categoryids'] as $id) {
            if ($cat = core_course_category::get($id, IGNORE_MISSING, true)) {
                $cat->delete_full(false);
            }
        }
        break;
}
echo 'MOODLEOPS-JSON: ' . json_encode($out) . "\n";
