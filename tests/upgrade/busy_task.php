<?php
// Test fixture: a scheduled task that Moodle sees running (what
// `cron.php --disable-wait` waits for) until stdin closes, started and
// finished through Moodle's task API with the task's own cron lock, as the
// cron runner would.
//   php busy_task.php config.php < (held open while the task must run)
define('CLI_SCRIPT', true);
require($argv[1]);
$class = '\core\task\cache_cleanup_task';
$lock = \core\lock\lock_config::get_lock_factory('cron')->get_lock($class, 10);
if (!$lock) {
    fwrite(STDERR, "could not take the cron lock of $class\n");
    exit(1);
}
$task = \core\task\manager::get_scheduled_task($class);
$task->set_lock($lock);
\core\task\manager::scheduled_task_starting($task);
echo "running\n";
while (fgets(STDIN) !== false) {
}
\core\task\manager::scheduled_task_complete($task);
echo "done\n";
