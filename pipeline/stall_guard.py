"""Stop a job whose rows stopped finishing (``--stall-minutes``), with a message that says why.

A Ray Data run can wait forever: an actor pool that asks for a GPU no node has, tasks that
never find a free CPU slot, a worker stuck on one input. The driver then sees no result
and no error. ``StallGuard`` is a thread of the driver: when no row has finished for
``minutes``, it asks ``describe()`` what the run waits for (while the stalled actors and
tasks still exist, so Ray's state API can name them), then interrupts the driver's main
thread, which turns the interrupt into ``JobStalled`` (``pipeline.segment``).

Ray Data has a clock of its own (``DataContext.execution_no_progress_timeout_s``, 30
minutes by default, which counts blocks moving between stages rather than rows finishing);
the jobs turn it off for their datasets so that one clock, this one, decides and explains.
"""

from __future__ import annotations

import _thread
import threading
import time
from collections.abc import Callable
from typing import Self


class StallGuard:
    """Context manager around a run: ``tick()`` whenever rows finish.

    After the block, ``report`` is None, or the ``describe()`` text of a stall; a
    ``KeyboardInterrupt`` leaving the block with ``report`` set came from the guard, not
    from the user. ``minutes`` 0 turns the guard off.
    """

    def __init__(
        self, minutes: float, describe: Callable[[], str], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.timeout = minutes * 60
        self.describe, self.clock = describe, clock
        self.report: str | None = None
        self._last = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        self._last = self.clock()

    def idle_seconds(self) -> float:
        return self.clock() - self._last

    def _loop(self) -> None:
        poll = min(10.0, max(self.timeout / 10, 0.1))
        while not self._stop.wait(poll):
            if self.idle_seconds() >= self.timeout:
                try:
                    self.report = self.describe()
                except Exception as exc:  # the stall is the news; a failed description must not hide it
                    self.report = f"no row finished for {self.timeout / 60:g} minutes ({type(exc).__name__}: {exc})"
                _thread.interrupt_main()
                return

    def __enter__(self) -> Self:
        self.tick()
        if self.timeout > 0:
            self._thread = threading.Thread(target=self._loop, name="stall-guard", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
