"""Progress of a running segmentation job, readable from the output folder alone.

While the job runs, a thread of the driver rewrites ``<output>/_progress.json`` every
``interval`` seconds (``--progress-interval``, 30 by default) and prints the same facts
as one line of the driver's log::

    progress: 64/200 images (2 errors), 0.31 images/s, ETA 7m20s

``done`` counts the images whose outputs the write stage has finished (results and
error rows). The write stage writes ``--write-batch-size`` images at a time, so ``done``
advances in such steps; ``images_per_second`` is ``done`` over the time since the run
started, and ``eta_s`` the images left at that rate (null until the first is done). The
last record, written when the run ends, has ``state`` ``finished`` (or ``failed``, with
the error). A failed progress write is logged and never fails the job.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Self

from models.storage import atomic_write

log = logging.getLogger(__name__)


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def format_duration(seconds: float | None) -> str:
    """``7m20s``, ``1h05m``, ``12s``; ``unknown`` for None."""
    if seconds is None:
        return "unknown"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class ProgressReporter:
    """Counts results as the driver receives them; a thread publishes them every ``interval`` seconds.

    Use as a context manager around the run: ``add(statuses)`` per batch of results; on
    exit the final record is written (``finished``, or ``failed`` when an exception
    leaves the block).

    Args:
        url: where the record goes (``<output>/_progress.json``).
        total: images this run processes.
        skipped: images a rerun skipped because their outputs exist (reported, not counted in ``total``).
        interval: seconds between records.
        clock: seconds since an arbitrary origin (tests pass their own).
        echo: where the log line goes (default: the driver's stdout).
    """

    def __init__(
        self,
        url: str,
        total: int,
        *,
        skipped: int = 0,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.url, self.total, self.skipped, self.interval, self.clock = url, total, skipped, interval, clock
        self.echo = echo or (lambda line: print(line, file=sys.stdout, flush=True))
        self.done = self.errors = 0
        self.start = clock()
        self.started_at = time.time()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, statuses) -> None:
        """Count one batch of finished images by their status (``ok`` or an error class)."""
        statuses = [str(s) for s in statuses]
        with self._lock:
            self.done += len(statuses)
            self.errors += sum(s != "ok" for s in statuses)

    def record(self, state: str = "running", error: str | None = None) -> dict:
        """The progress record now: done/total, errors, images/s, ETA."""
        with self._lock:
            done, errors = self.done, self.errors
        elapsed = max(self.clock() - self.start, 0.0)
        rate = done / elapsed if done and elapsed > 0 else None
        eta = max(self.total - done, 0) / rate if rate else (0.0 if done >= self.total else None)
        rec = {
            "state": state,
            "done": done,
            "total": self.total,
            "ok": done - errors,
            "errors": errors,
            "skipped_existing": self.skipped,
            "elapsed_s": round(elapsed, 1),
            "images_per_second": None if rate is None else round(rate, 3),
            "eta_s": None if eta is None else round(eta, 1),
            "started_at": _utc(self.started_at),
            "updated_at": _utc(time.time()),
        }
        if error is not None:
            rec["error"] = error
        return rec

    @staticmethod
    def line(rec: dict) -> str:
        """The driver-log form of a record."""
        rate = rec["images_per_second"]
        text = (
            f"progress: {rec['done']}/{rec['total']} images ({rec['errors']} errors), "
            f"{'-' if rate is None else f'{rate:.2f}'} images/s, ETA {format_duration(rec['eta_s'])}"
        )
        return text if rec["state"] == "running" else f"{text} [{rec['state']}]"

    def publish(self, state: str = "running", error: str | None = None) -> dict:
        """Write the record and print its line; storage errors are logged, not raised."""
        rec = self.record(state, error)
        self.echo(self.line(rec))
        try:
            atomic_write(self.url, json.dumps(rec, indent=1).encode())
        except Exception as exc:
            log.warning("could not write %s: %s: %s", self.url, type(exc).__name__, exc)
        return rec

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.publish()

    def __enter__(self) -> Self:
        self.publish()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc is None:
            self.publish("finished")
        else:
            self.publish("failed", f"{exc_type.__name__}: {exc}")
