"""Tasks: one registry that `session.task = 'Name'` chooses from."""

from __future__ import annotations

from typing import Callable

from selfstudy.errors import UserError
from selfstudy.tasks.base import Task
from selfstudy.tasks.classify import ClassifyTask

TASKS: dict[str, Callable[[], Task]] = {
    "ClassifyTask": ClassifyTask,
}


def build_task(choice: str | Task) -> Task:
    """The task named by `session.task` (a registry name or a gin reference's result)."""
    if not isinstance(choice, str):
        return choice
    if choice not in TASKS:
        raise UserError(f"unknown task {choice!r} in session.task; choose from: {', '.join(TASKS)}")
    return TASKS[choice]()


__all__ = ["TASKS", "Task", "build_task"]
