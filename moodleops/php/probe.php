<?php
// Read-only probe of a Moodle site, run as the web user by the playbooks and
// the health check:  php probe.php /srv/moodle/current/config.php
// Prints one line "MOODLEOPS-JSON: {...}". Versions come from Moodle's own
// database (what is installed), next to what is on disk (what is deployed).
define('CLI_SCRIPT', true);
define('NO_OUTPUT_BUFFERING', true);

if ($argc < 2 || !is_file($argv[1])) {
    fwrite(STDERR, "usage: php probe.php /path/to/moodle/config.php\n");
    exit(2);
}
require($argv[1]);
require_once($CFG->libdir . '/adminlib.php');

$out = [
    'installed' => !empty($CFG->version),
    'dirroot' => $CFG->dirroot,
    'dataroot' => $CFG->dataroot,
    'wwwroot' => $CFG->wwwroot,
    'php' => PHP_VERSION,
];
require($CFG->dirroot . '/version.php');
$out['disk_version'] = (string)$version;
$out['disk_release'] = $release;

if ($out['installed']) {
    $out['version'] = (string)$CFG->version;
    $out['release'] = (string)$CFG->release;
    $out['needs_upgrade'] = moodle_needs_upgrading();
    $out['maintenance_cli'] = file_exists($CFG->dataroot . '/climaintenance.html');
    $out['maintenance_enabled'] = !empty($CFG->maintenance_enabled);
    // Unset means enabled; `cron.php --disable` stores 0.
    $out['cron_enabled'] = get_config('core', 'cron_enabled') !== '0';
    $plugins = [];
    foreach (core_plugin_manager::instance()->get_plugins() as $type => $list) {
        foreach ($list as $name => $info) {
            if ($info->is_standard()) {
                continue;
            }
            $plugins[$type . '_' . $name] = [
                'db' => $info->versiondb === null ? null : (string)$info->versiondb,
                'disk' => $info->versiondisk === null ? null : (string)$info->versiondisk,
                'release' => $info->release,
            ];
        }
    }
    $out['plugins'] = $plugins;
    // Settings named on the command line ('plugin/name'): whether each is set.
    // Only a yes/no leaves this script, never a value (they are API keys).
    $settings = [];
    foreach (array_slice($argv, 2) as $setting) {
        [$plugin, $name] = array_pad(explode('/', $setting, 2), 2, '');
        $value = get_config($plugin, $name);
        $settings[$setting] = ($value !== false && $value !== '');
    }
    $out['settings_set'] = $settings;
}
echo 'MOODLEOPS-JSON: ' . json_encode($out) . "\n";
