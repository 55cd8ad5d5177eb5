"""Locust LoadTestShape classes of the calendar scenarios. They play the
timeline computed by moodleops.loadtests.timeline (written into the run plan)
and pick the user classes of the scenario. Imported only inside Locust
processes: importing locust monkey-patches the interpreter (gevent)."""

from __future__ import annotations

from locust import LoadTestShape
from moodleops.loadtests.sessions import SHAPE_KINDS
from moodleops.loadtests.timeline import Timeline, load_plan


class ModelShape(LoadTestShape):
    """Plays the plan's timeline with the user classes of the scenario."""

    abstract = True
    user_class_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.plan = load_plan()
        self.timeline = Timeline.from_json(self.plan["timeline"])

    def user_classes(self) -> list[type]:
        from moodleops.loadtests import users as user_module
        return [getattr(user_module, name) for name in self.user_class_names]

    def tick(self) -> tuple[int, float, list[type]] | None:
        users = self.timeline.users_at(self.get_run_time())
        if users is None:
            return None
        return users, self.timeline.spawn_rate, self.user_classes()


class WeekdayShape(ModelShape):
    """An ordinary weekday, hour by hour (students and trainers browsing)."""

    user_class_names = SHAPE_KINDS["weekday"]


class SeptemberStartShape(ModelShape):
    """The September start: a storm of first logins on top of ordinary traffic."""

    user_class_names = SHAPE_KINDS["september"]


class ExamShape(ModelShape):
    """N students start the same quiz within the start window and submit at the end."""

    user_class_names = SHAPE_KINDS["exam"]


class DeadlineShape(ModelShape):
    """The last hour before an assignment deadline: uploads growing to the deadline."""

    user_class_names = SHAPE_KINDS["deadline"]


class SmokeShape(ModelShape):
    """Every flow once (students: read, post, submit, quiz; trainers: grading)."""

    user_class_names = SHAPE_KINDS["smoke"]


SHAPE_CLASSES: dict[str, type[ModelShape]] = {
    "weekday": WeekdayShape, "september": SeptemberStartShape, "exam": ExamShape,
    "deadline": DeadlineShape, "smoke": SmokeShape,
}
