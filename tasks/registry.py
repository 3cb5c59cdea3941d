"""Which task a run has: `data.source` names it, here and nowhere else (tasks/__init__.py lists the tasks)."""

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
