"""lm-evaluation-harness task files (YAML) read and scored as lm-eval 0.4.13 does, without lm-eval:
requests with the same contexts, metrics and stderr with the same values."""

from llm.eval.tasks.scoring import TaskScores
from llm.eval.tasks.task import Request, Task, load_task

__all__ = ["Request", "Task", "TaskScores", "load_task"]
