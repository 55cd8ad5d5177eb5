<?php
// Shared start of every moodleops PHP helper, included at file scope:
//   require(__DIR__ . '/_bootstrap.php');
// Checks the config.php argument, boots Moodle as a CLI script (so events,
// caches and sessions behave as in Moodle's own CLI tools), and offers the
// request/reply helpers: JSON on stdin, one "MOODLEOPS-JSON: {...}" line out.
define('CLI_SCRIPT', true);
define('NO_OUTPUT_BUFFERING', true);

if ($argc < 2 || !is_file($argv[1])) {
    fwrite(STDERR, 'usage: php ' . basename($argv[0]) . " /path/to/moodle/config.php [options] [< request.json]\n");
    exit(2);
}
require($argv[1]);

/**
 * The JSON request on stdin, decoded; exits 2 with a one-line error when it is
 * not a JSON object holding $requiredkey.
 */
function moodleops_request(string $requiredkey): array {
    $request = json_decode(stream_get_contents(STDIN), true);
    if (!is_array($request) || !array_key_exists($requiredkey, $request)) {
        fwrite(STDERR, "stdin must be a JSON object with \"$requiredkey\"\n");
        exit(2);
    }
    return $request;
}

/** The answer to the Python side: one marked line on stdout. */
function moodleops_reply(array $data): void {
    echo 'MOODLEOPS-JSON: ' . json_encode($data) . "\n";
}
