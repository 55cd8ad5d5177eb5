"""Locust entry point of `moodleops loadtest run` (locust -f this file).

The plan ($MOODLEOPS_LOADTEST_PLAN, written by the run command) says which
scenario to play; Locust finds the user classes and the one shape class of
this module's namespace, so only the chosen shape is bound here."""

from __future__ import annotations

from moodleops.loadtests.shapes import SHAPE_CLASSES
from moodleops.loadtests.timeline import load_plan
from moodleops.loadtests.users import (  # noqa: F401  (Locust discovers them here)
    DeadlineStudentUser,
    ExamStudentUser,
    NewStudentUser,
    SmokeStudentUser,
    StudentUser,
    TrainerUser,
)

Shape = SHAPE_CLASSES[load_plan()["timeline"]["shape"]]
