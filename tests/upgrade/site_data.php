<?php
// Test fixture: create (mode "create") or read back (mode "read") a course,
// a user and a file through Moodle's own API, so an upgrade test can prove
// that data made before the upgrade is still there after it.
//   php site_data.php config.php < {"mode": "create"|"read", "tag": "..."}
define('CLI_SCRIPT', true);
require($argv[1]);
require_once($CFG->libdir . '/testing/generator/lib.php');
require_once($CFG->libdir . '/filelib.php');

$in = json_decode(stream_get_contents(STDIN), true);
$tag = clean_param($in['tag'], PARAM_ALPHANUMEXT);
\core\session\manager::set_user(get_admin());
$fs = get_file_storage();
$out = [];

if ($in['mode'] === 'create') {
    $gen = new testing_data_generator();
    $course = $gen->create_course(['shortname' => "upg-$tag", 'fullname' => "Upgrade course $tag"]);
    $user = $gen->create_user(['username' => "upg-$tag", 'email' => "upg-$tag@example.invalid"]);
    $context = context_course::instance($course->id);
    $file = $fs->create_file_from_string(['contextid' => $context->id, 'component' => 'course',
        'filearea' => 'overviewfiles', 'itemid' => 0, 'filepath' => '/', 'filename' => "$tag.txt"],
        "content of $tag, made before the upgrade");
}
$course = $DB->get_record('course', ['shortname' => "upg-$tag"]);
$user = $DB->get_record('user', ['username' => "upg-$tag"]);
if ($course) {
    $files = $fs->get_area_files(context_course::instance($course->id)->id, 'course', 'overviewfiles', 0, 'id', false);
    $file = reset($files);
}
$out = [
    'course' => $course ? $course->fullname : null,
    'user' => $user ? $user->email : null,
    'file_sha1' => (!empty($file)) ? sha1($file->get_content()) : null,
    'version' => $CFG->version,
];
echo 'MOODLEOPS-JSON: ' . json_encode($out) . "\n";
