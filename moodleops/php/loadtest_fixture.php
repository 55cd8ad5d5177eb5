<?php
// Load-test fixture, through Moodle's own testing data generator
// (lib/testing/generator/lib.php, the one admin/tool/generator also uses):
//
//   php loadtest_fixture.php /srv/moodle/current/config.php ACTION < payload.json
//
// ACTION is one of:
//   prepare  {prefix, password, students, trainers, questions, schools: [names],
//             courses, resource_bytes: [bytes per course], max_upload_bytes}
//            -> a category with one subcategory per school, `courses` courses
//               spread over them, each with a forum + discussion, a quiz of
//               true/false questions, an assignment taking one file and a file
//               resource of its size; students and trainers spread over the
//               courses (the first trainer teaches every course).
//   inspect  {prefix}  -> what the simulated users left behind (finished quiz
//            attempts, forum posts, submitted files), read through Moodle's DB API.
//   cleanup  {prefix, apply}  -> delete_course() + delete_user() of that prefix
//            only; lists without deleting unless apply is true.
//
// Everything created carries a marker (category and user idnumber) so that
// cleanup can never touch anything this script did not create.
// Prints one line "MOODLEOPS-JSON: {...}".
require(__DIR__ . '/_bootstrap.php');
if ($argc < 3) {
    fwrite(STDERR, "usage: php loadtest_fixture.php /path/to/moodle/config.php prepare|inspect|cleanup < payload.json\n");
    exit(2);
}
require_once($CFG->libdir . '/clilib.php');
require_once($CFG->dirroot . '/course/lib.php');
require_once($CFG->dirroot . '/user/lib.php');

const LT_MARKER = 'moodleops-loadtest';

function lt_fail(string $msg): void {
    fwrite(STDERR, $msg . "\n");
    exit(1);
}

$action = $argv[2];
$payload = moodleops_request('prefix');
$prefix = (string)($payload['prefix'] ?? '');
// Same rule as loadtests/fixture.py: the prefix is a whole username prefix, so
// it must not be a prefix of anything a person could own.
if (!preg_match('/^lt[a-z0-9]{3,20}$/', $prefix)) {
    lt_fail("prefix: '$prefix' is not valid (lt followed by 3 to 20 of [a-z0-9])");
}
$catidnumber = LT_MARKER . ':' . $prefix;

// The generator and course/module APIs act as someone: the admin, as the CLI scripts do.
\core\session\manager::set_user(get_admin());

function lt_prepare(string $prefix, string $catidnumber, array $p): array {
    global $CFG, $DB;
    require_once($CFG->libdir . '/testing/generator/lib.php');
    require_once($CFG->dirroot . '/mod/quiz/locallib.php');
    require_once($CFG->libdir . '/questionlib.php');
    if ($DB->record_exists('course_categories', ['idnumber' => $catidnumber])) {
        lt_fail("prefix: '$prefix' is already prepared (category $catidnumber exists); run cleanup first");
    }
    $password = (string)($p['password'] ?? '');
    $nstudents = (int)($p['students'] ?? 0);
    $ntrainers = (int)($p['trainers'] ?? 0);
    $nquestions = max(1, (int)($p['questions'] ?? 3));
    if ($password === '' || $nstudents < 1 || $ntrainers < 1) {
        lt_fail('payload: password, students >= 1 and trainers >= 1 are required');
    }
    $gen = new testing_data_generator();
    $schools = array_values(array_filter(array_map('strval', (array)($p['schools'] ?? ['Ecole']))));
    if (!$schools) {
        $schools = ['Ecole'];
    }
    $ncourses = max(1, (int)($p['courses'] ?? 1));
    $sizes = array_map('intval', (array)($p['resource_bytes'] ?? []));
    $maxupload = max(1048576, (int)($p['max_upload_bytes'] ?? 1048576));

    $category = $gen->create_category(['name' => "Load test $prefix", 'idnumber' => $catidnumber,
        'description' => 'Created by moodleops loadtest prepare; removed by moodleops loadtest cleanup.']);
    $schoolcats = [];
    foreach ($schools as $i => $name) {
        $schoolcats[] = $gen->create_category(['name' => "$name ($prefix)", 'parent' => $category->id,
            'idnumber' => "$catidnumber:school:" . ($i + 1)]);
    }

    $courses = [];
    for ($c = 0; $c < $ncourses; $c++) {
        $courses[] = $gen->create_course(['category' => $schoolcats[$c % count($schoolcats)]->id,
            'fullname' => "Load test course $prefix " . ($c + 1), 'shortname' => "$prefix-course" . ($c + 1),
            'idnumber' => "$catidnumber:course:" . ($c + 1), 'numsections' => 3, 'enablecompletion' => 0]);
    }

    $users = ['students' => [], 'trainers' => []];
    $teacherid = 0;
    foreach (['students' => [$nstudents, 's', 'student'], 'trainers' => [$ntrainers, 't', 'editingteacher']]
             as $kind => [$n, $letter, $role]) {
        for ($i = 1; $i <= $n; $i++) {
            $username = sprintf('%s%s%04d', $prefix, $letter, $i);
            $u = $gen->create_user(['username' => $username, 'password' => $password,
                'idnumber' => $catidnumber, 'firstname' => ucfirst($kind), 'lastname' => sprintf('%04d', $i),
                'email' => "$username@example.invalid", 'auth' => 'manual']);
            $c = ($i - 1) % $ncourses;
            $gen->enrol_user($u->id, $courses[$c]->id, $role);
            if ($kind === 'trainers' && $i === 1) {
                // The first trainer teaches (and owns the discussions of) every course.
                for ($o = 0; $o < $ncourses; $o++) {
                    if ($o !== $c) {
                        $gen->enrol_user($u->id, $courses[$o]->id, $role);
                    }
                }
                $teacherid = (int)$u->id;
            }
            $users[$kind][] = ['id' => (int)$u->id, 'username' => $username, 'course' => $c];
        }
    }
    $out = [];
    foreach ($courses as $c => $course) {
        $out[] = lt_course_content($gen, $course, $teacherid, $nquestions, $sizes[$c] ?? 20000, $maxupload);
    }
    return [
        'prefix' => $prefix,
        'category_id' => (int)$category->id,
        'schools' => $schools,
        'courses' => $out,
        'quiz_questions' => $nquestions,
        'students' => $users['students'],
        'trainers' => $users['trainers'],
    ] + $out[0];
}

function lt_course_content(testing_data_generator $gen, stdClass $course, int $teacherid, int $nquestions,
                           int $resourcebytes, int $maxupload): array {
    global $USER;
    $forum = $gen->create_module('forum', ['course' => $course->id, 'name' => 'Forum de promotion',
        'section' => 1]);
    $forumgen = $gen->get_plugin_generator('mod_forum');
    $discussion = $forumgen->create_discussion(['course' => $course->id, 'forum' => $forum->id,
        'userid' => $teacherid, 'name' => 'Questions sur le stage', 'message' => '<p>Posez vos questions ici.</p>']);

    // A course document of the size the platform's files have (not a tiny text file).
    $draft = file_get_unused_draft_itemid();
    $chunk = str_repeat("Support de cours, chapitre 1. ", 1024);
    $content = substr(str_repeat($chunk, intdiv(max(1, $resourcebytes), strlen($chunk)) + 1), 0, max(1, $resourcebytes));
    get_file_storage()->create_file_from_string(['component' => 'user', 'filearea' => 'draft',
        'contextid' => context_user::instance($USER->id)->id, 'itemid' => $draft,
        'filename' => 'support-de-cours.pdf', 'filepath' => '/'], $content);
    $resource = $gen->create_module('resource', ['course' => $course->id, 'name' => 'Support de cours',
        'section' => 1, 'files' => $draft]);

    $quiz = $gen->create_module('quiz', ['course' => $course->id, 'name' => 'Evaluation de pharmacologie',
        'section' => 2, 'questionsperpage' => 1, 'grade' => 10, 'sumgrades' => $nquestions,
        'preferredbehaviour' => 'deferredfeedback']);
    $qgen = $gen->get_plugin_generator('core_question');
    $qcat = $qgen->create_question_category(['contextid' => context_module::instance($quiz->cmid)->id]);
    // Saved through the question type's API with the form data a teacher would
    // submit: core_question_generator::create_question() needs the PHPUnit
    // helpers, which a production code tree does not ship.
    $qtype = question_bank::get_qtype('truefalse');
    for ($i = 1; $i <= $nquestions; $i++) {
        $form = (object)[
            'category' => $qcat->id . ',' . $qcat->contextid,
            'name' => "Question $i",
            'questiontext' => ['text' => "Affirmation numero $i : vraie ou fausse ?", 'format' => FORMAT_HTML],
            'generalfeedback' => ['text' => '', 'format' => FORMAT_HTML],
            'defaultmark' => 1, 'penalty' => 1, 'correctanswer' => '1',
            'feedbacktrue' => ['text' => 'Correct.', 'format' => FORMAT_HTML],
            'feedbackfalse' => ['text' => 'Incorrect.', 'format' => FORMAT_HTML],
            'status' => \core_question\local\bank\question_version_status::QUESTION_STATUS_READY,
        ];
        $q = $qtype->save_question((object)['qtype' => 'truefalse', 'category' => $qcat->id,
            'createdby' => 0, 'idnumber' => null], $form);
        quiz_add_quiz_question($q->id, $quiz, $i);
    }
    quiz_update_sumgrades($quiz);

    $assign = $gen->create_module('assign', ['course' => $course->id, 'name' => 'Depot du rapport de stage',
        'section' => 3, 'submissiondrafts' => 0, 'assignsubmission_file_enabled' => 1,
        'assignsubmission_file_maxfiles' => 1, 'assignsubmission_file_maxsizebytes' => $maxupload,
        'assignsubmission_onlinetext_enabled' => 0, 'duedate' => time() + 7 * DAYSECS]);

    rebuild_course_cache($course->id, true);
    return [
        'course_id' => (int)$course->id,
        'forum_cmid' => (int)$forum->cmid,
        'discussion_id' => (int)$discussion->id,
        'discussion_post_id' => (int)$discussion->firstpost,
        'resource_cmid' => (int)$resource->cmid,
        'resource_filename' => 'support-de-cours.pdf',
        'resource_bytes' => $resourcebytes,
        'quiz_cmid' => (int)$quiz->cmid,
        'quiz_id' => (int)$quiz->id,
        'quiz_questions' => $nquestions,
        'assign_cmid' => (int)$assign->cmid,
    ];
}

function lt_users(string $prefix, string $catidnumber): array {
    global $DB;
    $like = $DB->sql_like('username', ':prefix');
    return $DB->get_records_select('user', "$like AND idnumber = :marker AND deleted = 0",
        ['prefix' => $DB->sql_like_escape($prefix) . '%', 'marker' => $catidnumber], 'id', 'id, username');
}

function lt_courses(string $catidnumber): array {
    global $DB;
    $cat = $DB->get_record('course_categories', ['idnumber' => $catidnumber]);
    if (!$cat) {
        return [null, []];
    }
    // The fixture's category and its school subcategories (path /<id>/...).
    $cats = $DB->get_fieldset_select('course_categories', 'id', 'id = :id OR ' . $DB->sql_like('path', ':path'),
        ['id' => $cat->id, 'path' => $DB->sql_like_escape($cat->path) . '/%']);
    [$in, $params] = $DB->get_in_or_equal($cats, SQL_PARAMS_NAMED, 'cat');
    return [$cat, $DB->get_records_select('course', "category $in", $params, 'id', 'id, shortname')];
}

function lt_inspect(string $prefix, string $catidnumber): array {
    global $DB;
    [$cat, $courses] = lt_courses($catidnumber);
    $users = lt_users($prefix, $catidnumber);
    $out = ['prefix' => $prefix, 'prepared' => (bool)$cat, 'users' => count($users),
            'quiz_attempts_finished' => 0, 'quiz_attempts_inprogress' => 0, 'forum_posts' => 0,
            'assign_submissions' => 0, 'assign_files' => 0];
    if (!$cat || !$users || !$courses) {
        return $out;
    }
    [$uin, $uparams] = $DB->get_in_or_equal(array_keys($users), SQL_PARAMS_NAMED, 'u');
    [$cin, $cparams] = $DB->get_in_or_equal(array_keys($courses), SQL_PARAMS_NAMED, 'c');
    $params = $uparams + $cparams;
    $out['quiz_attempts_finished'] = $DB->count_records_sql(
        "SELECT COUNT(1) FROM {quiz_attempts} qa JOIN {quiz} q ON q.id = qa.quiz
          WHERE q.course $cin AND qa.userid $uin AND qa.state = 'finished'", $params);
    $out['quiz_attempts_inprogress'] = $DB->count_records_sql(
        "SELECT COUNT(1) FROM {quiz_attempts} qa JOIN {quiz} q ON q.id = qa.quiz
          WHERE q.course $cin AND qa.userid $uin AND qa.state = 'inprogress'", $params);
    // Replies only: the fixture's own discussion post is the parent (parent = 0 for it).
    $out['forum_posts'] = $DB->count_records_sql(
        "SELECT COUNT(1) FROM {forum_posts} p JOIN {forum_discussions} d ON d.id = p.discussion
          WHERE d.course $cin AND p.userid $uin AND p.parent <> 0", $params);
    $out['assign_submissions'] = $DB->count_records_sql(
        "SELECT COUNT(1) FROM {assign_submission} s JOIN {assign} a ON a.id = s.assignment
          WHERE a.course $cin AND s.userid $uin AND s.status = 'submitted' AND s.latest = 1", $params);
    $out['assign_files'] = $DB->count_records_sql(
        "SELECT COUNT(1) FROM {files} f JOIN {assign_submission} s ON s.id = f.itemid
           JOIN {assign} a ON a.id = s.assignment
          WHERE f.component = 'assignsubmission_file' AND f.filearea = 'submission_files'
            AND f.filename <> '.' AND a.course $cin AND s.userid $uin", $params);
    return $out;
}

function lt_cleanup(string $prefix, string $catidnumber, bool $apply): array {
    [$cat, $courses] = lt_courses($catidnumber);
    $users = lt_users($prefix, $catidnumber);
    $out = ['prefix' => $prefix, 'applied' => $apply,
            'courses' => array_values(array_map(fn($c) => $c->shortname, $courses)),
            'users' => count($users), 'category' => $cat ? $cat->idnumber : null];
    if (!$apply) {
        return $out;
    }
    foreach ($courses as $c) {
        delete_course($c->id, false);
    }
    foreach ($users as $u) {
        delete_user(core_user::get_user($u->id));
    }
    if ($cat) {
        core_course_category::get($cat->id, MUST_EXIST, true)->delete_full(false);
    }
    return $out;
}

switch ($action) {
    case 'prepare':
        try {
            $out = lt_prepare($prefix, $catidnumber, $payload);
        } catch (Throwable $e) {
            // Nothing half-done: remove whatever this prefix got before the failure.
            lt_cleanup($prefix, $catidnumber, true);
            lt_fail('prepare failed and was rolled back: ' . $e->getMessage());
        }
        break;
    case 'inspect':
        $out = lt_inspect($prefix, $catidnumber);
        break;
    case 'cleanup':
        $out = lt_cleanup($prefix, $catidnumber, !empty($payload['apply']));
        break;
    default:
        lt_fail("action: '$action' is not valid (prepare, inspect, cleanup)");
}
moodleops_reply($out);
