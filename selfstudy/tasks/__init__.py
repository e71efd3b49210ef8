"""Tasks: one registry that `session.task = 'Name'` chooses from."""

from __future__ import annotations

from typing import Callable

from selfstudy.errors import UserError
from selfstudy.tasks.amdim import AMDIMTask
from selfstudy.tasks.barlow import BarlowTwinsTask
from selfstudy.tasks.base import SelfSupervisedTask, Task
from selfstudy.tasks.byol import BYOLTask
from selfstudy.tasks.classify import ClassifyTask
from selfstudy.tasks.cmc import CMCTask
from selfstudy.tasks.depth import DepthTask
from selfstudy.tasks.dino import DINOTask
from selfstudy.tasks.mae import MAETask
from selfstudy.tasks.moco import MoCoTask
from selfstudy.tasks.mocov3 import MoCoV3Task
from selfstudy.tasks.rotate import RotateTask
from selfstudy.tasks.simclr import SimCLRTask
from selfstudy.tasks.simsiam import SimSiamTask
from selfstudy.tasks.vae import VAETask
from selfstudy.tasks.vicreg import VICRegTask

TASKS: dict[str, Callable[[], Task]] = {
    "ClassifyTask": ClassifyTask,
    "RotateTask": RotateTask,
    "SimCLRTask": SimCLRTask,
    "MoCoTask": MoCoTask,
    "BYOLTask": BYOLTask,
    "VAETask": VAETask,
    "CMCTask": CMCTask,
    "DepthTask": DepthTask,
    "AMDIMTask": AMDIMTask,
    "BarlowTwinsTask": BarlowTwinsTask,
    "VICRegTask": VICRegTask,
    "SimSiamTask": SimSiamTask,
    "MoCoV3Task": MoCoV3Task,
    "DINOTask": DINOTask,
    "MAETask": MAETask,
}


def build_task(choice: str | Task) -> Task:
    """The task named by `session.task` (a registry name or a gin reference's result)."""
    if not isinstance(choice, str):
        return choice
    if choice not in TASKS:
        raise UserError(f"unknown task {choice!r} in session.task; choose from: {', '.join(TASKS)}")
    return TASKS[choice]()


__all__ = ["TASKS", "SelfSupervisedTask", "Task", "build_task"]
