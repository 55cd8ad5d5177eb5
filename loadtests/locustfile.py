"""Locust entry point of `moodleops loadtest run` (locust -f this file).

The plan ($MOODLEOPS_LOADTEST_PLAN, written by the run command) says which
scenario to play; Locust finds the user classes and the one shape class of
this module's namespace, so only the chosen shape is bound here.

Every request is also recorded (wall time, page type, milliseconds, ok, the
web node that answered when the load balancer names it) into
requests.csv in the working directory (the results directory) of the process
that holds the statistics: a local run writes it directly, workers send their
requests to the master once a second, and everything left when the run ends
(the master waits for each worker's last report before it stops). The summary
computes the warm-up-free and peak-window figures from it; Locust's own CSV
only has whole-run figures.

Locust rewrites <prefix>_stats.csv once a second while it runs and not at its
exit, so the requests of the last second (an exam's last submits, made while
the shape stops) are missing from it. The process holding the statistics
writes them once more, complete, into <prefix>_stats_final.csv as it quits.
"""

from __future__ import annotations

import csv
import time
from typing import Any

import gevent
from locust import events
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV
from moodleops.loadtests.shapes import SHAPE_CLASSES
from moodleops.loadtests.users import (  # noqa: F401  (Locust discovers them here)
    PLAN,
    DeadlineStudentUser,
    ExamStudentUser,
    NewStudentUser,
    SmokeStudentUser,
    StudentUser,
    TrainerUser,
)

Shape = SHAPE_CLASSES[PLAN["timeline"]["shape"]]
REQUESTS_CSV = "requests.csv"
FINAL_STATS_SUFFIX = "_stats_final.csv"
MESSAGE = "moodleops_requests"
FLUSH, FLUSHED = "moodleops_flush", "moodleops_flushed"     # master -> workers, and their answer


SERVED_BY = PLAN.get("served_by_header", "")


def _row(start_time: float | None, name: str, response_time: float, exception: Any, response: Any) -> list[Any]:
    t = start_time if start_time is not None else time.time() - response_time / 1000
    headers = getattr(response, "headers", None)
    node = str(headers.get(SERVED_BY) or "") if SERVED_BY and headers is not None else ""
    return [round(t, 3), name, round(response_time, 1), 0 if exception else 1, node.replace(",", " ")]


@events.init.add_listener
def _record_requests(environment: Any, **_kw: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        buffer: list[list[Any]] = []

        def on_request(name: str, response_time: float, exception: Any = None, start_time: float | None = None,
                       response: Any = None, **_: Any) -> None:
            buffer.append(_row(start_time, name, response_time, exception, response))

        def flush(**_: Any) -> None:
            if buffer:
                runner.send_message(MESSAGE, buffer[:])
                buffer.clear()

        def loop() -> None:
            while True:
                gevent.sleep(1.0)
                flush()

        def last_report(**_: Any) -> None:
            # Once the users have stopped: the last requests and Locust's statistics
            # (_send_stats is Locust's own report, reset after sending; Locust is
            # pinned in requirements.txt), before FLUSHED on the same socket.
            flush()
            runner._send_stats()

        def on_flush(**_: Any) -> None:
            runner.stop()                     # users finish (--stop-timeout); test_stop: last_report
            runner.send_message(FLUSHED)

        events.request.add_listener(on_request)
        events.test_stop.add_listener(last_report)
        runner.register_message(FLUSH, on_flush)
        gevent.spawn(loop)
        return

    out = open(REQUESTS_CSV, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - open for the process's life

    def write(rows: list[list[Any]]) -> None:
        out.writelines(",".join(map(str, row)) + "\n" for row in rows)

    events.test_start.add_listener(lambda **_: out.write(f"# start {time.time():.3f}\n"))
    events.quitting.add_listener(lambda **_: out.flush())
    if isinstance(runner, MasterRunner):
        runner.register_message(MESSAGE, lambda msg, **_: write(msg.data))
        pending: set[str] = set()
        runner.register_message(FLUSHED, lambda msg, **_: pending.discard(msg.node_id))

        def drain_workers(**_: Any) -> None:
            # A headless shape ends with the master's quit(), which tells the workers to
            # quit and waits 0.5 s: a worker's users may take up to --stop-timeout to
            # finish, so its last seconds of requests and statistics arrived after the
            # master had stopped listening (requests.csv and Locust's totals then
            # disagreed, both short). Here, before the master stops, each worker stops
            # its users and reports everything, and the master waits for all of them.
            ids = [c.id for c in runner.clients.all]
            pending.update(ids)
            for cid in ids:
                runner.send_message(FLUSH, client_id=cid)
            deadline = time.monotonic() + (environment.stop_timeout or 0) + 30
            while pending and time.monotonic() < deadline:
                gevent.sleep(0.1)

        events.test_stopping.add_listener(drain_workers)
    else:
        events.request.add_listener(
            lambda name, response_time, exception=None, start_time=None, response=None, **_: write(
                [_row(start_time, name, response_time, exception, response)]))


@events.init.add_listener
def _final_stats_at_exit(environment: Any, **_kw: Any) -> None:
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix or isinstance(environment.runner, WorkerRunner):
        return

    def write_final(**_: Any) -> None:
        # `quit` fires once the runner has stopped (workers' last reports in), before Locust exits.
        with open(prefix + FINAL_STATS_SUFFIX, "w", newline="", encoding="utf-8") as fh:
            StatsCSV(environment, PERCENTILES_TO_REPORT).requests_csv(csv.writer(fh))

    events.quit.add_listener(write_final)
