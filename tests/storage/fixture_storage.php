<?php
// Test fixture of tests/storage: builds (action "build") or removes (action
// "cleanup") the test's own schools THROUGH MOODLE: categories, courses and
// modules with the data generator, files with the file_storage API, a course
// deleted into the category recycle bin by delete_course(), users with
// private files and a draft, cohorts and the account-type profile field.
//   php fixture_storage.php /srv/moodle/current/config.php < payload.json
// Prints one line "MOODLEOPS-JSON: {...}" describing what Moodle stored.
require(__DIR__ . '/../moodle_fixture.php');

$in = moodleops_request('action');
$gen = new testing_data_generator();
$fs = get_file_storage();

function stored(stored_file $f): array {
    return ['contenthash' => $f->get_contenthash(), 'filesize' => (int)$f->get_filesize(),
            'contextid' => (int)$f->get_contextid(), 'component' => $f->get_component(),
            'filearea' => $f->get_filearea(), 'filename' => $f->get_filename()];
}

function put(file_storage $fs, int $contextid, string $component, string $area, int $itemid,
             string $name, string $content): array {
    $f = $fs->create_file_from_string(['contextid' => $contextid, 'component' => $component,
        'filearea' => $area, 'itemid' => $itemid, 'filepath' => '/', 'filename' => $name], $content);
    return stored($f);
}

if ($in['action'] === 'cleanup') {
    // Only what the build of this run created: its categories, users and cohorts.
    foreach ($in['cohorts'] as $idnumber) {
        if ($cohort = $DB->get_record('cohort', ['idnumber' => $idnumber])) {
            cohort_delete_cohort($cohort);
        }
    }
    foreach ($in['users'] as $username) {
        if ($user = $DB->get_record('user', ['username' => $username, 'deleted' => 0])) {
            delete_user($user);
        }
    }
    foreach ($in['categories'] as $idnumber) {
        if ($cat = $DB->get_record('course_categories', ['idnumber' => $idnumber])) {
            core_course_category::get($cat->id, MUST_EXIST, true)->delete_full(false);
        }
    }
    echo 'MOODLEOPS-JSON: ' . json_encode(['ok' => true]) . "\n";
    exit(0);
}

$out = ['schools' => [], 'files' => [], 'users' => [], 'recycle' => [], 'created_field' => false];

// The account-type profile field named by the inventory; created only if missing.
$field = $DB->get_record('user_info_field', ['shortname' => $in['type_field']]);
if (!$field) {
    $gen->create_custom_profile_field(['datatype' => 'menu', 'shortname' => $in['type_field'],
        'name' => 'Account type', 'param1' => implode("\n", $in['type_options'])]);
    $out['created_field'] = true;
}

$years = [];      // [school index][year index] => category id
$courses = [];    // name => course record
foreach ($in['schools'] as $i => $school) {
    $top = $gen->create_category(['name' => $school['name'], 'idnumber' => $school['idnumber'], 'parent' => 0]);
    $cohort = cohort_add_cohort((object)['contextid' => context_coursecat::instance($top->id)->id,
        'name' => $school['name'], 'idnumber' => $school['cohort'], 'component' => '']);
    $info = ['category_id' => (int)$top->id, 'cohort_id' => (int)$cohort,
             'context_id' => (int)context_coursecat::instance($top->id)->id, 'years' => [], 'courses' => []];
    foreach ($school['years'] as $j => $yname) {
        $y = $gen->create_category(['name' => $yname, 'parent' => $top->id,
                                    'idnumber' => $school['idnumber'] . '-Y' . $j]);
        $years[$i][$j] = $y;
        $info['years'][] = ['id' => (int)$y->id, 'name' => $yname];
    }
    $out['schools'][] = $info;
    $out['top'][$i] = $top;
}

foreach ($in['files'] as $k => $spec) {
    $i = $spec['school'];
    if ($spec['where'] === 'category') {
        $ctx = context_coursecat::instance($out['top'][$i]->id);
        $rec = put($fs, $ctx->id, 'coursecat', 'description', 0, $spec['filename'], $spec['content']);
    } else {
        $name = $spec['course'];
        if (!isset($courses[$name])) {
            $courses[$name] = $gen->create_course(['shortname' => $name, 'fullname' => $name,
                'category' => $years[$i][$spec['year']]->id]);
            $out['schools'][$i]['courses'][] = ['id' => (int)$courses[$name]->id, 'shortname' => $name,
                                                'year' => $spec['year']];
        }
        $course = $courses[$name];
        if ($spec['where'] === 'module') {
            $page = $gen->create_module('page', ['course' => $course->id]);
            $ctx = context_module::instance($page->cmid);
            $rec = put($fs, $ctx->id, 'mod_page', 'content', 0, $spec['filename'], $spec['content']);
        } else {
            $ctx = context_course::instance($course->id);
            $rec = put($fs, $ctx->id, 'course', 'overviewfiles', 0, $spec['filename'], $spec['content']);
        }
    }
    $out['files'][$k] = $rec;
}

// A course deleted into its category's recycle bin (tool_recyclebin category bin).
if (!empty($in['recycle'])) {
    $r = $in['recycle'];
    $catid = $years[$r['school']][$r['year']]->id;
    $course = $gen->create_course(['shortname' => $r['course'], 'fullname' => $r['course'], 'category' => $catid]);
    put($fs, context_course::instance($course->id)->id, 'course', 'overviewfiles', 0, 'doomed.txt', $r['content']);
    delete_course($course, false);
    $catctx = context_coursecat::instance($catid);
    foreach ($fs->get_area_files($catctx->id, 'tool_recyclebin', 'recyclebin_coursecat', false, 'id', false) as $f) {
        $out['recycle'][] = stored($f);
    }
    $out['recyclebin_enabled'] = (bool)\tool_recyclebin\category_bin::is_enabled();
}

foreach ($in['users'] as $spec) {
    $record = ['username' => $spec['username'], 'firstname' => 'Storage', 'lastname' => 'Test',
               'suspended' => $spec['suspended'] ? 1 : 0,
               'profile_field_' . $in['type_field'] => $spec['type']];
    $user = $gen->create_user($record);
    $school = $in['schools'][$spec['school']];
    cohort_add_member($out['schools'][$spec['school']]['cohort_id'], $user->id);
    $u = ['id' => (int)$user->id, 'username' => $user->username, 'files' => []];
    $uctx = context_user::instance($user->id);
    if (isset($spec['private'])) {
        $u['files'][] = put($fs, $uctx->id, 'user', 'private', 0, 'private.txt', $spec['private']);
    }
    if (isset($spec['draft'])) {
        \core\session\manager::set_user($user);
        $draftid = file_get_unused_draft_itemid();
        $u['files'][] = put($fs, $uctx->id, 'user', 'draft', $draftid, 'draft.txt', $spec['draft']);
        \core\session\manager::set_user(get_admin());
    }
    $out['users'][] = $u;
}
// The cases of issue 15, each as a Moodle user would make them.
if (!empty($in['cases'])) {
    require_once($CFG->dirroot . '/backup/util/includes/backup_includes.php');
    require_once($CFG->dirroot . '/repository/lib.php');
    $c = $in['cases'];
    $teacher = $DB->get_record('user', ['id' => $out['users'][$c['teacher']]['id']], '*', MUST_EXIST);
    $area = function (int $contextid, string $component, string $filearea, int $itemid) use ($fs): array {
        return array_values(array_map('stored', $fs->get_area_files($contextid, $component, $filearea, $itemid,
                                                                      'id', false)));
    };
    $cases = [];
    foreach ([$c['upload']['course'], $c['backup']['course']] as $name) {
        $gen->enrol_user($teacher->id, $courses[$name]->id, 'editingteacher');
    }
    \core\session\manager::set_user($teacher);
    $uctx = context_user::instance($teacher->id);

    // An upload: the file picker puts it in a draft, the form's save copies it into
    // the course; the draft stays until cron purges it (4 days).
    $draftid = file_get_unused_draft_itemid();
    put($fs, $uctx->id, 'user', 'draft', $draftid, 'upload.txt', $c['upload']['content']);
    $cctx = context_course::instance($courses[$c['upload']['course']]->id);
    file_save_draft_area_files($draftid, $cctx->id, 'course', 'summary', 0);
    $cases['upload'] = ['saved' => $area($cctx->id, 'course', 'summary', 0),
                        'draft' => $area($uctx->id, 'user', 'draft', $draftid)];

    // Edit forms opened on areas with files: file_prepare_draft_area copies them into drafts.
    $cases['prepared'] = [];
    foreach ($c['prepare'] as $k) {
        $f = $out['files'][$k];
        $d = 0;
        file_prepare_draft_area($d, $f['contextid'], $f['component'], $f['filearea'], 0);
        $cases['prepared'][] = ['upload' => $k, 'draft' => $area($uctx->id, 'user', 'draft', $d)];
    }

    // An alias (file reference through the "Server files" repository) to a file of another course.
    \core\session\manager::set_user(get_admin());
    $t = $out['files'][$c['alias']['target']];
    $orig = $fs->get_file($t['contextid'], $t['component'], $t['filearea'], 0, '/', $c['alias']['target_name']);
    $repo = $DB->get_record_sql("SELECT ri.id FROM {repository_instances} ri JOIN {repository} r ON r.id = ri.typeid
                                  WHERE r.type = 'local' AND r.visible = 1", [], IGNORE_MULTIPLE);
    if (!$repo) {
        throw new moodle_exception('the "Server files" repository (local) is not enabled');
    }
    $actx = context_course::instance($courses[$c['alias']['course']]->id);
    $alias = $fs->create_file_from_reference(['contextid' => $actx->id, 'component' => 'course',
        'filearea' => 'summary', 'itemid' => 0, 'filepath' => '/', 'filename' => 'alias.txt'],
        $repo->id, file_storage::pack_reference([
            'contextid' => $orig->get_contextid(), 'component' => $orig->get_component(),
            'filearea' => $orig->get_filearea(), 'itemid' => $orig->get_itemid(),
            'filepath' => $orig->get_filepath(), 'filename' => $orig->get_filename()]));
    $alias->sync_external_file();
    $cases['alias'] = $area($actx->id, 'course', 'summary', 0);

    // A teacher's course backup, kept in their private backup area (user/backup).
    \core\session\manager::set_user($teacher);
    $courseid = $courses[$c['backup']['course']]->id;
    $bc = new backup_controller(backup::TYPE_1COURSE, $courseid, backup::FORMAT_MOODLE,
                                backup::INTERACTIVE_NO, backup::MODE_GENERAL, $teacher->id);
    // The name the backup form gives (backup_ui_stage_schema), as a teacher gets it.
    $plan = $bc->get_plan();
    $plan->get_setting('filename')->set_value(backup_plan_dbops::get_default_backup_filename(
        backup::FORMAT_MOODLE, backup::TYPE_1COURSE, $courseid, $plan->get_setting('users')->get_value(),
        $plan->get_setting('anonymize')->get_value()));
    $bc->execute_plan();
    $bc->destroy();
    $cases['backup'] = ['course_id' => (int)$courses[$c['backup']['course']]->id,
                        'files' => $area($uctx->id, 'user', 'backup', 0)];
    \core\session\manager::set_user(get_admin());

    // A school's category moved under another school's category.
    $m = $c['moved'];
    core_course_category::get($out['schools'][$m['school']]['category_id'], MUST_EXIST, true)
        ->change_parent($out['schools'][$m['under']]['category_id']);
    $out['cases'] = $cases;
}
unset($out['top']);
echo 'MOODLEOPS-JSON: ' . json_encode($out) . "\n";
