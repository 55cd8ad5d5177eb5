<?php
// Shared start of the tests' PHP fixtures, which build their data through
// Moodle's own API. Included at file scope:
//   require(__DIR__ . '/../moodle_fixture.php');
// Boots Moodle the way the moodleops helpers do (moodleops/php/_bootstrap.php),
// loads the APIs the fixtures use, acts as the site administrator, and says
// what failed on one line (Moodle's CLI handler prints only the error string).
require(__DIR__ . '/../moodleops/php/_bootstrap.php');
require_once($CFG->libdir . '/testing/generator/lib.php');
require_once($CFG->libdir . '/filelib.php');
require_once($CFG->libdir . '/enrollib.php');
require_once($CFG->dirroot . '/cohort/lib.php');
require_once($CFG->dirroot . '/course/lib.php');
require_once($CFG->dirroot . '/user/lib.php');
require_once($CFG->dirroot . '/user/profile/lib.php');
require_once($CFG->dirroot . '/user/profile/definelib.php');

\core\session\manager::set_user(get_admin());
set_exception_handler(function ($e) {
    fwrite(STDERR, get_class($e) . ': ' . $e->getMessage() . ' ' . ($e->debuginfo ?? '') . "\n");
    exit(1);
});
