"""Stop a job whose rows stopped finishing (``--stall-minutes``), with a message that says why.

A Ray Data run can wait forever: an actor pool that asks for a GPU no node has, tasks that
never find a free CPU slot, a worker stuck on one input. The driver then sees no result
and no error. ``guarded(rows, minutes, describe)`` iterates ``rows`` in a thread of its own
and hands each item to the caller; when none has come for ``minutes``, it asks
``describe()`` what the run waits for (while the stalled actors and tasks still exist, so
Ray's state API can name them) and raises ``Stalled`` with that report in the caller's
thread. The iterating thread is a daemon: it ends with the process (the jobs exit), and
the job's outputs are whatever was written, complete, as after any stop.

Ray Data has a clock of its own (``DataContext.execution_no_progress_timeout_s``, 30
minutes by default, which counts blocks moving between stages rather than rows finishing);
the jobs turn it off for their datasets so that one clock, this one, decides and explains.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Stalled(Exception):
    """No item came for the guard's minutes; ``str()`` is ``describe()``'s report."""


def guarded(
    items: Iterable[T],
    minutes: float,
    describe: Callable[[], str],
    *,
    poll: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[T]:
    """``items``, raising Stalled when none has come for ``minutes`` (0: no limit, plain iteration).

    The items are produced in a daemon thread, so a wait inside ``items`` (Ray Data waiting
    for resources, in C code that a signal could not interrupt) never blocks the check.
    An exception of ``items`` is raised here, in the caller's thread.
    """
    if minutes <= 0:
        yield from items
        return
    timeout = minutes * 60
    handoff: queue.Queue = queue.Queue(maxsize=1)

    def produce() -> None:
        try:
            for item in items:
                handoff.put(("item", item))
            handoff.put(("done", None))
        except BaseException as exc:  # handed to the caller, which raises it
            handoff.put(("error", exc))

    threading.Thread(target=produce, name="stall-guarded-rows", daemon=True).start()
    last = clock()
    while True:
        try:
            kind, value = handoff.get(timeout=min(poll, timeout))
        except queue.Empty:
            if clock() - last >= timeout:
                try:
                    report = describe()
                except Exception as exc:  # the stall is the news; a failed description must not hide it
                    report = f"no row finished for {minutes:g} minutes ({type(exc).__name__}: {exc})"
                raise Stalled(report) from None
            continue
        if kind == "done":
            return
        if kind == "error":
            raise value
        last = clock()
        yield value
