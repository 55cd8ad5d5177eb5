<?php
// End-of-agreement export of a school, through Moodle's own backup API.
//   php school_export.php /srv/moodle/current/config.php < request.json
// {"mode": "list", "category_idnumber": "SCH-..."}
//   -> {"category": {...}, "courses": [{"id", "shortname", "fullname", "category", "path", "timemodified"}]}
//      every course below the school's top-level category, recursively.
// {"mode": "backup", "courseid": N, "users": true|false, "destination": "/dir"}
//   -> {"file": "/dir/<name>.mbz", "size": N, "users": bool}
// admin/cli/backup.php (4.1) has no user-data switch: this is the same
// backup_controller (MODE_GENERAL), with the plan's 'users' setting set as the
// inventory decides for the school, run as the admin.
require(__DIR__ . '/_bootstrap.php');
require_once($CFG->dirroot . '/backup/util/includes/backup_includes.php');

$in = moodleops_request('mode');
$admin = get_admin();
\core\session\manager::set_user($admin);

if ($in['mode'] === 'list') {
    $top = $DB->get_record('course_categories', ['idnumber' => (string)$in['category_idnumber']]);
    if (!$top) {
        fwrite(STDERR, "no course category with idnumber {$in['category_idnumber']}\n");
        exit(3);
    }
    $like = $DB->sql_like('cc.path', ':prefix');
    $sql = "SELECT c.id, c.shortname, c.fullname, c.timemodified, cc.id AS categoryid, cc.name AS categoryname
              FROM {course} c JOIN {course_categories} cc ON cc.id = c.category
             WHERE cc.id = :top OR $like
          ORDER BY c.id";
    $courses = [];
    foreach ($DB->get_records_sql($sql, ['top' => $top->id, 'prefix' => $top->path . '/%']) as $c) {
        $courses[] = ['id' => (int)$c->id, 'shortname' => $c->shortname, 'fullname' => $c->fullname,
            'categoryid' => (int)$c->categoryid, 'category' => $c->categoryname, 'timemodified' => (int)$c->timemodified];
    }
    moodleops_reply(['category' => ['id' => (int)$top->id, 'name' => $top->name, 'idnumber' => $top->idnumber],
        'courses' => $courses]);
    exit(0);
}

if ($in['mode'] === 'backup') {
    $course = $DB->get_record('course', ['id' => (int)$in['courseid']], '*', MUST_EXIST);
    $dir = rtrim((string)$in['destination'], '/');
    if (!is_dir($dir) || !is_writable($dir)) {
        fwrite(STDERR, "destination $dir is not a writable directory\n");
        exit(3);
    }
    $users = !empty($in['users']);
    $bc = new backup_controller(backup::TYPE_1COURSE, $course->id, backup::FORMAT_MOODLE,
        backup::INTERACTIVE_NO, backup::MODE_GENERAL, $admin->id);
    $plan = $bc->get_plan();
    $plan->get_setting('users')->set_value($users);
    if ($plan->setting_exists('anonymize')) {
        $plan->get_setting('anonymize')->set_value(false);
    }
    $filename = backup_plan_dbops::get_default_backup_filename($bc->get_format(), $bc->get_type(), $bc->get_id(),
        $users, false);
    $plan->get_setting('filename')->set_value($filename);
    $bc->execute_plan();
    $results = $bc->get_results();
    $file = $results['backup_destination'] ?? null;
    if (!$file) {
        $bc->destroy();
        fwrite(STDERR, "backup of course {$course->id} produced no file\n");
        exit(4);
    }
    $target = "$dir/$filename";
    if (!$file->copy_content_to($target)) {
        $bc->destroy();
        fwrite(STDERR, "could not write $target\n");
        exit(4);
    }
    // The copy in Moodle's backup area would count against the school's storage.
    $file->delete();
    $bc->destroy();
    moodleops_reply(['file' => $target, 'size' => filesize($target), 'users' => $users,
        'users_setting' => $users]);
    exit(0);
}
fwrite(STDERR, "mode must be list or backup\n");
exit(2);
