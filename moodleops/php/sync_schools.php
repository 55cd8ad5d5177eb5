<?php
// Give each school of the inventory its space in Moodle: a top-level course
// category (idnumber = category_idnumber) and a cohort (idnumber =
// cohort_idnumber) in that category. Creates what is missing, never renames or
// deletes: a school's own edits to names are reported, not overwritten.
//   php sync_schools.php /srv/moodle/current/config.php [--dry-run] < schools.json
// stdin: {"schools": [{"code", "name", "category_idnumber", ["cohort_idnumber"]}, ...],
//         "account_type_field": "ut_accounttype", "account_types": ["student", "trainer", ...]}
// Also ensures the custom profile field that tells hosted accounts (expire on
// 31 August) from students, as a menu of the inventory's account types.
require(__DIR__ . '/_bootstrap.php');
require_once($CFG->dirroot . '/cohort/lib.php');
require_once($CFG->dirroot . '/course/lib.php');
require_once($CFG->dirroot . '/user/profile/definelib.php');

$dryrun = in_array('--dry-run', $argv, true);
$input = moodleops_request('schools');
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
if (!empty($input['account_type_field'])) {
    $shortname = $input['account_type_field'];
    $field = $DB->get_record('user_info_field', ['shortname' => $shortname]);
    if (!$field) {
        $changes[] = ['create' => 'profile_field', 'shortname' => $shortname];
        if (!$dryrun) {
            $catid = $DB->get_field('user_info_category', 'id', ['name' => 'UT'], IGNORE_MULTIPLE);
            if (!$catid) {
                $category = (object)['name' => 'UT'];
                profile_save_category($category);
                $catid = $category->id;
            }
            profile_save_field((object)[
                'datatype' => 'menu', 'shortname' => $shortname, 'name' => 'Type de compte UT',
                'categoryid' => $catid, 'description' => ['text' => '', 'format' => FORMAT_HTML],
                'defaultdata' => '', 'required' => 0, 'locked' => 1, 'visible' => 0, 'forceunique' => 0,
                'signup' => 0, 'param1' => implode("\n", $input['account_types']),
            ], []);
        }
    } else if ($field->datatype === 'menu') {
        $missing = array_diff($input['account_types'], explode("\n", $field->param1));
        if ($missing) {
            $notes[] = "profile field $shortname lacks the account types: " . implode(', ', $missing);
        }
    }
}
moodleops_reply(['changes' => $changes, 'notes' => $notes, 'dry_run' => $dryrun]);
