<?php
// Read-only probe of a Moodle site, run as the web user by the playbooks and
// the health check:  php probe.php /srv/moodle/current/config.php
// Prints one line "MOODLEOPS-JSON: {...}". Versions come from Moodle's own
// database (what is installed), next to what is on disk (what is deployed).
require(__DIR__ . '/_bootstrap.php');
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
    $out['maintenance_later'] = isset($CFG->maintenance_later) ? (int)$CFG->maintenance_later : null;
    // Shown to every visitor during maintenance: not a secret; an upgrade puts it back.
    $out['maintenance_message'] = isset($CFG->maintenance_message) ? (string)$CFG->maintenance_message : '';
    // Unset means enabled; `cron.php --disable` stores 0.
    $out['cron_enabled'] = get_config('core', 'cron_enabled') !== '0';
    $plugins = [];
    $manager = core_plugin_manager::instance();
    foreach ($manager->get_plugins() as $type => $list) {
        foreach ($list as $name => $info) {
            if ($info->is_standard()) {
                continue;
            }
            $plugins[$type . '_' . $name] = [
                'db' => $info->versiondb === null ? null : (string)$info->versiondb,
                'disk' => $info->versiondisk === null ? null : (string)$info->versiondisk,
                'release' => $info->release,
                // Subplugins (e.g. hotpotattempt_*) ship inside their parent.
                'parent' => $manager->get_parent_of_subplugin($type) ?: null,
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
moodleops_reply($out);
