<?php
// Test fixture for tests/backup: create (mode "create") or read back (mode
// "read") a course with a file, a user with a known password, and a school-like
// category holding two courses, all through Moodle's own API. Mode "delete"
// deletes the course file of each tag in payload "delete" in turn, emptying
// Moodle's trash (its file-system cron) after the tags in "purge_after";
// mode "check_files" reads every file Moodle lists and says which it cannot serve.
//   php backup_data.php config.php < {"mode": "create"|"read"|"delete"|"check_files", "tag": "...", ...}
define('CLI_SCRIPT', true);
require($argv[1]);
require_once($CFG->libdir . '/testing/generator/lib.php');
require_once($CFG->libdir . '/filelib.php');

$in = json_decode(stream_get_contents(STDIN), true);
$tag = clean_param($in['tag'], PARAM_ALPHANUMEXT);
\core\session\manager::set_user(get_admin());
$fs = get_file_storage();

if ($in['mode'] === 'create') {
    $gen = new testing_data_generator();
    $course = $gen->create_course(['shortname' => "bk-$tag", 'fullname' => "Backup course $tag"]);
    $gen->create_user(['username' => "bk-$tag", 'email' => "bk-$tag@example.invalid",
        'password' => $in['password'], 'firstname' => 'Backup', 'lastname' => $tag]);
    $fs->create_file_from_string(['contextid' => context_course::instance($course->id)->id, 'component' => 'course',
        'filearea' => 'overviewfiles', 'itemid' => 0, 'filepath' => '/', 'filename' => "$tag.txt"],
        "content of $tag, made before the backup " . random_string(32));
    // A school: top-level category with a sub-category, a course in each.
    // The playbook may already have made it (the test school is in the test inventory).
    $top = $DB->get_record('course_categories', ['idnumber' => "BK-SCH-$tag"])
        ?: $gen->create_category(['name' => "School $tag", 'idnumber' => "BK-SCH-$tag"]);
    $sub = $gen->create_category(['name' => "Year 1 $tag", 'parent' => $top->id]);
    $c1 = $gen->create_course(['shortname' => "bk-sch1-$tag", 'fullname' => "School course 1 $tag", 'category' => $top->id]);
    $c2 = $gen->create_course(['shortname' => "bk-sch2-$tag", 'fullname' => "School course 2 $tag", 'category' => $sub->id]);
    $gen->create_module('page', ['course' => $c1->id, 'name' => "Page $tag", 'content' => "Page content $tag"]);
    $gen->create_module('forum', ['course' => $c2->id, 'name' => "Forum $tag"]);
}
if ($in['mode'] === 'delete') {
    foreach ($in['delete'] as $t) {
        $c = $DB->get_record('course', ['shortname' => 'bk-' . clean_param($t, PARAM_ALPHANUMEXT)], '*', MUST_EXIST);
        $fs->delete_area_files(context_course::instance($c->id)->id, 'course', 'overviewfiles');
        if (in_array($t, $in['purge_after'])) {
            $fs->get_file_system()->cron();     // what file_trash_cleanup_task does once a day
        }
    }
}
if ($in['mode'] === 'check_files') {
    $bad = [];
    $checked = 0;
    $rs = $DB->get_recordset_select('files', "filename <> '.'");
    foreach ($rs as $rec) {
        $checked++;
        $file = $fs->get_file_instance($rec);
        try {
            if (sha1($file->get_content()) !== $rec->contenthash) {
                $bad[] = $rec->contenthash . ' ' . $rec->filename . ': wrong content';
            }
        } catch (Throwable $e) {
            $bad[] = $rec->contenthash . ' ' . $rec->filename . ': ' . $e->getMessage();
        }
    }
    $rs->close();
    echo 'MOODLEOPS-JSON: ' . json_encode(['checked' => $checked, 'bad' => $bad]) . "\n";
    exit(0);
}
$course = $DB->get_record('course', ['shortname' => "bk-$tag"]);
$user = $DB->get_record('user', ['username' => "bk-$tag"]);
$file = null;
if ($course) {
    $files = $fs->get_area_files(context_course::instance($course->id)->id, 'course', 'overviewfiles', 0, 'id', false);
    $file = reset($files) ?: null;
}
$top = $DB->get_record('course_categories', ['idnumber' => "BK-SCH-$tag"]);
echo 'MOODLEOPS-JSON: ' . json_encode([
    'course' => $course ? ['id' => (int)$course->id, 'fullname' => $course->fullname] : null,
    'user' => $user ? ['username' => $user->username, 'email' => $user->email, 'password' => $user->password] : null,
    'file' => $file ? ['sha1' => $file->get_contenthash(), 'name' => $file->get_filename(),
        'url' => moodle_url::make_pluginfile_url($file->get_contextid(), 'course', 'overviewfiles', null, '/',
            $file->get_filename())->out(false)] : null,
    'school_category' => $top ? ['id' => (int)$top->id, 'idnumber' => $top->idnumber] : null,
    'school_courses' => $top ? array_values($DB->get_fieldset_sql(
        "SELECT c.shortname FROM {course} c JOIN {course_categories} cc ON cc.id = c.category
          WHERE cc.id = ? OR cc.path LIKE ? ORDER BY c.shortname", [$top->id, $top->path . '/%'])) : [],
]) . "\n";
