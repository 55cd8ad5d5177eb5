<?php
// Test fixture for the billing count: creates (or removes) schools, a custom
// profile field, users and cohort memberships THROUGH MOODLE's API, the way
// an administrator or the account-loading tools would.
//   php billing_fixture.php /path/to/config.php < payload.json
// payload: {"action": "create", "field": "shortname",
//           "schools": [{"code", "name", "category_idnumber", "cohort_idnumber"}],
//           "users": [{"username", "type", "suspended", "cohorts": [idnumber, ...]}],
//           "courses": [{"shortname", "fullname", "category_idnumber", "bytes"}]}
//       or {"action": "cleanup", "usernames": [...], "cohorts": [...], "categories": [...]}
// The profile field is kept: it is a stable test field, shared by every run.
require(__DIR__ . '/../moodle_fixture.php');

$in = moodleops_request('action');
// Local accounts belong to the local MNet host.
$mnethostid = $CFG->mnet_localhost_id;
$out = ['action' => $in['action']];

if ($in['action'] === 'create') {
    // The account-type field: a hidden, locked text field, created once.
    $field = $DB->get_record('user_info_field', ['shortname' => $in['field']]);
    if (!$field) {
        $catid = $DB->get_field_sql('SELECT MIN(id) FROM {user_info_category}');
        if (!$catid) {
            profile_save_category((object)['name' => 'Comptes UT']);
            $catid = $DB->get_field_sql('SELECT MIN(id) FROM {user_info_category}');
        }
        profile_save_field((object)[
            'id' => 0, 'shortname' => $in['field'], 'name' => 'Account type (moodleops tests)',
            'datatype' => 'text', 'categoryid' => $catid,
            'description' => ['text' => '', 'format' => FORMAT_HTML],
            'defaultdata' => '', 'required' => 0, 'locked' => 1, 'visible' => 0,
            'forceunique' => 0, 'signup' => 0, 'param1' => 30, 'param2' => 64, 'param3' => 0,
            'param4' => '', 'param5' => '',
        ], []);
        $out['field_created'] = true;
    }
    $cohorts = [];
    foreach ($in['schools'] as $s) {
        $cat = core_course_category::create([
            'name' => $s['name'], 'idnumber' => $s['category_idnumber'], 'parent' => 0,
        ]);
        $cohortid = cohort_add_cohort((object)[
            'contextid' => context_coursecat::instance($cat->id)->id,
            'name' => $s['name'], 'idnumber' => $s['cohort_idnumber'], 'component' => '',
        ]);
        $cohorts[$s['cohort_idnumber']] = $cohortid;
    }
    $users = [];
    foreach ($in['users'] as $u) {
        $id = user_create_user((object)[
            'username' => $u['username'], 'auth' => 'manual', 'password' => 'Fx-9a' . random_string(12) . '#Z',
            'firstname' => 'Test', 'lastname' => $u['username'], 'email' => $u['username'] . '@example.invalid',
            'confirmed' => 1, 'mnethostid' => $mnethostid, 'suspended' => empty($u['suspended']) ? 0 : 1,
        ]);
        if (isset($u['type'])) {
            profile_save_data((object)['id' => $id, 'profile_field_' . $in['field'] => $u['type']]);
        }
        foreach ($u['cohorts'] as $idnumber) {
            cohort_add_member($cohorts[$idnumber], $id);
        }
        $users[$u['username']] = $id;
    }
    $out['users'] = $users;
    // Courses with one file of a known size (course overview image area), stored by the File API.
    $fs = get_file_storage();
    $courses = [];
    foreach ($in['courses'] ?? [] as $c) {
        $catid = $DB->get_field('course_categories', 'id', ['idnumber' => $c['category_idnumber']], MUST_EXIST);
        $course = create_course((object)['fullname' => $c['fullname'], 'shortname' => $c['shortname'],
                                         'category' => $catid, 'idnumber' => $c['shortname']]);
        $fs->create_file_from_string([
            'contextid' => context_course::instance($course->id)->id, 'component' => 'course',
            'filearea' => 'overviewfiles', 'itemid' => 0, 'filepath' => '/', 'filename' => 'content.bin',
        ], random_bytes_emulate((int)$c['bytes']));
        $courses[$c['shortname']] = (int)$course->id;
    }
    $out['courses'] = $courses;
    $out['cohorts'] = $cohorts;
} else if ($in['action'] === 'cleanup') {
    $deleted = ['users' => 0, 'cohorts' => 0, 'categories' => 0];
    foreach ($in['usernames'] as $username) {
        if ($user = $DB->get_record('user', ['username' => $username, 'deleted' => 0, 'mnethostid' => $mnethostid])) {
            delete_user($user);
            $deleted['users']++;
        }
    }
    foreach ($in['cohorts'] as $idnumber) {
        if ($cohort = $DB->get_record('cohort', ['idnumber' => $idnumber])) {
            cohort_delete_cohort($cohort);
            $deleted['cohorts']++;
        }
    }
    foreach ($in['categories'] as $idnumber) {
        if ($id = $DB->get_field('course_categories', 'id', ['idnumber' => $idnumber])) {
            core_course_category::get($id, MUST_EXIST, true)->delete_full(false);
            $deleted['categories']++;
        }
    }
    $out['deleted'] = $deleted;
} else {
    fwrite(STDERR, "unknown action {$in['action']}\n");
    exit(2);
}
echo 'MOODLEOPS-JSON: ' . json_encode($out) . "\n";
