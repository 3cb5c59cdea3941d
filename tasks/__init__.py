"""tasks/: one file per task behind one Task interface (tasks/base.py): its data and how it is prepared, prompt pools
and ID/OOD splits, its gold judge, the reward functions it offers and the stages it needs.

`data.source` picks the task, here and nowhere else: 'sandbox' (tasks/sandbox.py), 'ifeval' (tasks/ifeval.py), or
a file, directory or hub id of preference pairs (tasks/preference.py). Adding a task is adding one file and a line
in TASKS.
"""

from __future__ import annotations

from common.config import Config
from tasks.base import Task
from tasks.ifeval import IFEvalTask
from tasks.preference import PreferenceTask
from tasks.sandbox import SandboxTask

TASKS: dict[str, type[Task]] = {"sandbox": SandboxTask, "ifeval": IFEvalTask}


def task_class(source: str) -> type[Task]:
    """The task a `data.source` names: a registered task, else preference pairs read from that file or hub id."""
    return TASKS.get(source, PreferenceTask)


def load_task(cfg: Config) -> Task:
    return task_class(cfg.data.source)(cfg)
