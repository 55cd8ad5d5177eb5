<?php
// Where this Moodle keeps its data, as Moodle itself resolves it (config.php
// may relocate filedir and trashdir; lib/setup.php sets the other defaults):
//   php storage_paths.php /srv/moodle/current/config.php
// Prints one line "MOODLEOPS-JSON: {...}". Read-only.
require(__DIR__ . '/_bootstrap.php');

$out = [
    'dataroot' => $CFG->dataroot,
    // Defaults of file_system_filedir::__construct().
    'filedir' => $CFG->filedir ?? ($CFG->dataroot . '/filedir'),
    'trashdir' => $CFG->trashdir ?? ($CFG->dataroot . '/trashdir'),
    'tempdir' => $CFG->tempdir,
    'cachedir' => $CFG->cachedir,
    'localcachedir' => $CFG->localcachedir,
    'backuptempdir' => $CFG->backuptempdir,
    'alternative_file_system_class' => $CFG->alternative_file_system_class ?? '',
];
moodleops_reply($out);
