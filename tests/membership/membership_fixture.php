<?php
// Test fixture for school membership: schools (category + cohort), a course per
// school, users with cohort memberships, a school profile field value and
// course enrolments, all made THROUGH MOODLE's API.
//   php membership_fixture.php /path/to/config.php < payload.json
// payload: {"action": "create", "field": "shortname", "type_field": "shortname",
//           "schools": [{"name", "category_idnumber", "cohort_idnumber", "course"}],
//           "users": [{"username", "suspended", "type", "school_field", "cohorts": [idnumber],
//                      "enrolments": [{"course", "active"}]}]}
//       or {"action": "cleanup", "usernames": [...], "cohorts": [...], "categories": [...]}
// Profile fields are kept: stable test fields shared by every run.
require(__DIR__ . '/../moodle_fixture.php');
require_once($CFG->dirroot . '/enrol/locallib.php');

$in = moodleops_request('action');
$mnethostid = $CFG->mnet_localhost_id;
$out = ['action' => $in['action']];

function fixture_field(string $shortname): void {
    global $DB;
    if ($DB->record_exists('user_info_field', ['shortname' => $shortname])) {
        return;
    }
    $catid = $DB->get_field_sql('SELECT MIN(id) FROM {user_info_category}');
    if (!$catid) {
        profile_save_category((object)['name' => 'Comptes UT']);
        $catid = $DB->get_field_sql('SELECT MIN(id) FROM {user_info_category}');
    }
    profile_save_field((object)[
        'id' => 0, 'shortname' => $shortname, 'name' => "$shortname (moodleops tests)",
        'datatype' => 'text', 'categoryid' => $catid,
        'description' => ['text' => '', 'format' => FORMAT_HTML],
        'defaultdata' => '', 'required' => 0, 'locked' => 1, 'visible' => 0,
        'forceunique' => 0, 'signup' => 0, 'param1' => 30, 'param2' => 64, 'param3' => 0,
        'param4' => '', 'param5' => '',
    ], []);
}

if ($in['action'] === 'create') {
    fixture_field($in['field']);
    fixture_field($in['type_field']);
    $cohorts = [];
    $instances = [];
    $manual = enrol_get_plugin('manual');
    $studentrole = $DB->get_field('role', 'id', ['shortname' => 'student'], MUST_EXIST);
    foreach ($in['schools'] as $s) {
        $cat = core_course_category::create(['name' => $s['name'], 'idnumber' => $s['category_idnumber'], 'parent' => 0]);
        // The course sits in a subcategory: membership covers the whole tree below the school.
        $sub = core_course_category::create(['name' => $s['name'] . ' (year 1)', 'parent' => $cat->id]);
        $cohorts[$s['cohort_idnumber']] = cohort_add_cohort((object)[
            'contextid' => context_coursecat::instance($cat->id)->id,
            'name' => $s['name'], 'idnumber' => $s['cohort_idnumber'], 'component' => '',
        ]);
        $course = create_course((object)['fullname' => $s['course'], 'shortname' => $s['course'],
                                         'category' => $sub->id]);
        $instances[$s['course']] = $DB->get_record('enrol', ['courseid' => $course->id, 'enrol' => 'manual'], '*', MUST_EXIST);
    }
    $users = [];
    foreach ($in['users'] as $u) {
        $id = user_create_user((object)[
            'username' => $u['username'], 'auth' => 'manual', 'password' => 'Fx-9a' . random_string(12) . '#Z',
            'firstname' => 'Test', 'lastname' => $u['username'], 'email' => $u['username'] . '@example.invalid',
            'confirmed' => 1, 'mnethostid' => $mnethostid, 'suspended' => empty($u['suspended']) ? 0 : 1,
        ]);
        $data = ['id' => $id, 'profile_field_' . $in['type_field'] => $u['type']];
        if (isset($u['school_field'])) {
            $data['profile_field_' . $in['field']] = $u['school_field'];
        }
        profile_save_data((object)$data);
        foreach ($u['cohorts'] as $idnumber) {
            cohort_add_member($cohorts[$idnumber], $id);
        }
        foreach ($u['enrolments'] as $e) {
            $manual->enrol_user($instances[$e['course']], $id, $studentrole, 0, 0,
                $e['active'] ? ENROL_USER_ACTIVE : ENROL_USER_SUSPENDED);
        }
        $users[$u['username']] = $id;
    }
    $out['users'] = $users;
} else if ($in['action'] === 'cleanup') {
    foreach ($in['usernames'] as $username) {
        if ($user = $DB->get_record('user', ['username' => $username, 'deleted' => 0, 'mnethostid' => $mnethostid])) {
            delete_user($user);
        }
    }
    foreach ($in['cohorts'] as $idnumber) {
        if ($cohort = $DB->get_record('cohort', ['idnumber' => $idnumber])) {
            cohort_delete_cohort($cohort);
        }
    }
    foreach ($in['categories'] as $idnumber) {
        if ($id = $DB->get_field('course_categories', 'id', ['idnumber' => $idnumber])) {
            core_course_category::get($id, MUST_EXIST, true)->delete_full(false);
        }
    }
} else {
    fwrite(STDERR, "unknown action {$in['action']}\n");
    exit(2);
}
echo 'MOODLEOPS-JSON: ' . json_encode($out) . "\n";
