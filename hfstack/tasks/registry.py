"""Every built-in task by name: what `hfstack sft` generates, `hfstack eval` scores, and `hfstack rl`
trains on (those with an `answer_form`). A held-out row is scored by the task its `task` field names.

    from hfstack.tasks.registry import TASKS
    TASKS["counting"].score(row, answer)

The registry lives here rather than in hfstack/tasks/__init__.py because the package cannot import
its own modules without an import cycle (tests/unit/test_layout.py). Tested in tests/unit/test_tasks.py.
"""

from __future__ import annotations

from hfstack.tasks.arithmetic import ArithmeticTask
from hfstack.tasks.base import Task
from hfstack.tasks.counting import CountingTask
from hfstack.tasks.identity import IdentityTask
from hfstack.tasks.multiturn import MultiTurnTask
from hfstack.tasks.search import SearchTask
from hfstack.tasks.spelling import SpellingTask

TASKS: dict[str, Task] = {task.name: task for task in (IdentityTask(), ArithmeticTask(), CountingTask(),
                                                       SpellingTask(), SearchTask(), MultiTurnTask())}
