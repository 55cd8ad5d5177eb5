<?php
// Give each school of the inventory its space in Moodle: a top-level course
// category (idnumber = category_idnumber) and a cohort (idnumber =
// cohort_idnumber) in that category. Creates what is missing, never renames or
// deletes: a school's own edits to names are reported, not overwritten.
//   php sync_schools.php /srv/moodle/current/config.php [--dry-run] < schools.json
// stdin: {"schools": [{"code", "name", "category_idnumber", ["cohort_idnumber"]}, ...]}
define('CLI_SCRIPT', true);

if ($argc < 2 || !is_file($argv[1])) {
    fwrite(STDERR, "usage: php sync_schools.php /path/to/config.php [--dry-run] < schools.json\n");
    exit(2);
}
require($argv[1]);
require_once($CFG->dirroot . '/cohort/lib.php');
require_once($CFG->dirroot . '/course/lib.php');

$dryrun = in_array('--dry-run', $argv, true);
$input = json_decode(stream_get_contents(STDIN), true);
if (!is_array($input) || !isset($input['schools']) || !is_array($input['schools'])) {
    fwrite(STDERR, "stdin must be JSON {\"schools\": [...]}\n");
    exit(2);
}
\core\session\manager::set_user(get_admin());

$changes = [];
$notes = [];
foreach ($input['schools'] as $school) {
    $school['cohort_idnumber'] = $school['cohort_idnumber'] ?? $school['category_idnumber'];
    $category = $DB->get_record('course_categories', ['idnumber' => $school['category_idnumber']]);
    if (!$category) {
        $changes[] = ['school' => $school['code'], 'create' => 'category', 'idnumber' => $school['category_idnumber']];
        if (!$dryrun) {
            $category = core_course_category::create([
                'name' => $school['name'],
                'idnumber' => $school['category_idnumber'],
                'parent' => 0,
                'description' => 'Espace de ' . $school['name'] . ' (moodleops: ' . $school['code'] . ')',
            ]);
        }
    } else {
        if ((int)$category->parent !== 0) {
            $notes[] = "{$school['code']}: category {$school['category_idnumber']} is not top-level (parent {$category->parent})";
        }
        if ($category->name !== $school['name']) {
            $notes[] = "{$school['code']}: category is named '{$category->name}' in Moodle, '{$school['name']}' in the inventory (left as is)";
        }
    }
    $cohort = $DB->get_record('cohort', ['idnumber' => $school['cohort_idnumber']]);
    if (!$cohort) {
        $changes[] = ['school' => $school['code'], 'create' => 'cohort', 'idnumber' => $school['cohort_idnumber']];
        if (!$dryrun && $category) {
            cohort_add_cohort((object)[
                'contextid' => context_coursecat::instance($category->id)->id,
                'name' => $school['name'],
                'idnumber' => $school['cohort_idnumber'],
                'description' => 'Comptes de ' . $school['name'],
                'component' => '',
            ]);
        }
    }
}
echo 'MOODLEOPS-JSON: ' . json_encode(['changes' => $changes, 'notes' => $notes, 'dry_run' => $dryrun]) . "\n";
