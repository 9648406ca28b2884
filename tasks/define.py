"""``task``: Prefect's task decorator, applied on first use.

The archive flows' tasks are also run without Prefect (``flows.direct``: ``rtk-archiver
archive-one`` without a Prefect API), and importing Prefect costs ~80 MiB of memory and ~2 s
of CPU, most of such a run's. ``@task(...)`` here keeps the function and its options and
builds the Prefect task (``prefect.task(**options)(fn)``) the first time anything but the
function (``fn``), its ``name`` or its ``retry_condition_fn`` is asked for: calling it,
``submit``, ``with_options``, ... behave exactly as on the Prefect task.

``no_cache=True`` stands for ``cache_policy=NO_CACHE`` (a Prefect object).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any


class LazyTask:
    """A Prefect task, built on first use (see the module's docstring)."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name: str = options.get("name") or fn.__name__
        self.retry_condition_fn: Callable[..., bool] | None = options.get("retry_condition_fn")
        self._options = options
        self._task: Any = None
        self._lock = threading.Lock()

    @property
    def task(self) -> Any:
        """The Prefect task (imports Prefect)."""
        if self._task is None:
            with self._lock:
                if self._task is None:
                    from prefect import task
                    from prefect.cache_policies import NO_CACHE

                    options = dict(self._options)
                    if options.pop("no_cache", False):
                        options["cache_policy"] = NO_CACHE
                    self._task = task(**options)(self.fn)
        return self._task

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_task", "_options", "_lock"):
            raise AttributeError(name)
        return getattr(self.task, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.task(*args, **kwargs)

    def __repr__(self) -> str:
        return f"LazyTask({self.name!r})"


def task(**options: Any) -> Callable[[Callable[..., Any]], LazyTask]:
    """``@task(name=..., retries=..., ...)``: Prefect's options, the task built on first use."""

    def decorate(fn: Callable[..., Any]) -> LazyTask:
        return LazyTask(fn, options)

    return decorate
