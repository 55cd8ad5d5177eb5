<?php
// Moodle's admin/cli/install_database.php with the admin password read from
// stdin: that script takes it only as --adminpass, and a command line is
// readable by every local user (ps, /proc) for the install's whole duration.
//   php install_database.php /srv/moodle/current/config.php [install_database.php options]
//       < {"adminpass": "..."}
// stdout: Moodle's own install output, then MOODLEOPS-JSON: {"installed": true}
// (only when the install ran to its end; any failure exits non-zero).
if ($argc < 2 || !is_file($argv[1])) {
    fwrite(STDERR, 'usage: php ' . basename($argv[0]) . " /path/to/moodle/config.php [options] < request.json\n");
    exit(2);
}
$moodleopsrequest = json_decode(stream_get_contents(STDIN), true);
if (!is_array($moodleopsrequest) || !is_string($moodleopsrequest['adminpass'] ?? null)
        || $moodleopsrequest['adminpass'] === '') {
    fwrite(STDERR, "stdin must be a JSON object with a non-empty \"adminpass\"\n");
    exit(2);
}
foreach (array_slice($argv, 2) as $arg) {
    if (strpos($arg, '--adminpass') === 0) {
        fwrite(STDERR, "--adminpass belongs on stdin, not on the command line\n");
        exit(2);
    }
}
$moodleopsscript = dirname(realpath($argv[1])) . '/admin/cli/install_database.php';
// cli_get_params() reads $_SERVER['argv']; the password is added here, in memory only.
$_SERVER['argv'] = array_merge([$moodleopsscript], array_slice($argv, 2),
    ['--adminpass=' . $moodleopsrequest['adminpass']]);
$argv = $_SERVER['argv'];
$argc = count($argv);
unset($moodleopsrequest);
// install_database.php ends with exit(0) once installed; a failure exits 1 first.
register_shutdown_function(function (): void {
    if (function_exists('during_initial_install') && !during_initial_install()) {
        echo 'MOODLEOPS-JSON: ' . json_encode(['installed' => true]) . "\n";
    }
});
require($moodleopsscript);
