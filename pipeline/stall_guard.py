"""Stop a job whose rows stopped finishing (``--stall-minutes``), with a message that says why.

A Ray Data run can wait forever: an actor pool that asks for a GPU no node has, tasks that
never find a free CPU slot, a worker stuck on one input. The driver then sees no result
and no error. ``guarded(rows, minutes, describe)`` iterates ``rows`` in a thread of its own
and hands each item to the caller; when none has come for ``minutes``, it asks
``describe()`` what the run waits for (while the stalled actors and tasks still exist, so
Ray's state API can name them) and raises ``Stalled`` with that report in the caller's
thread. The iterating thread is a daemon: it ends with the process (the jobs exit), and
the job's outputs are whatever was written, complete, as after any stop.

``stall_message`` is the jobs' ``describe()``: what each pool reserves, what is free, and
(``waiting_for_resources``, through Ray's state API) which actors and tasks Ray has not
placed for want of resources. The jobs raise ``JobStalled`` (exit 6) with it.

Ray Data has a clock of its own (``DataContext.execution_no_progress_timeout_s``, 30
minutes by default, which counts blocks moving between stages rather than rows finishing);
the jobs turn it off for their datasets so that one clock, this one, decides and explains.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Stalled(Exception):
    """No item came for the guard's minutes; ``str()`` is ``describe()``'s report."""


class JobStalled(RuntimeError):
    """A job stopped by the guard, its report and how to resume in the message (the job exits 6)."""

    exit_code = 6


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


def stall_message(job: str, minutes: float, res) -> str:
    """What a stalled run tells its user: what each stage reserves (``res``, the run's
    ``pipeline.segment.StageResources``), what the cluster has free, and the actors and tasks
    still waiting for a node (``waiting_for_resources``)."""
    import ray

    lines = [
        f"{job}: no image finished for {minutes:g} minutes (--stall-minutes); stopping.",
        f"Each task and CPU actor reserves {res.cpu_share:g} CPU; pools: " + pool_sizes(res) + ".",
        "Free now: " + _fmt(ray.available_resources()) + " of " + _fmt(ray.cluster_resources()) + ".",
    ]
    waiting = waiting_for_resources()
    if waiting:
        lines.append("Not placed yet, for want of resources: " + "; ".join(waiting) + ".")
    lines.append(
        "On an autoscaling cluster, a node that is still starting looks the same: raise --stall-minutes "
        "(0 waits forever)."
    )
    return "\n".join(lines)


def pool_sizes(res) -> str:
    if res.layout == "fused":
        return f"fused {res.fused_actors} x {res.fused_cpus:g} CPU"
    gpu = f" + {res.model_gpus:g} GPU" if res.model_gpus else ""
    return (
        f"proposals {res.proposal_actors}, model {res.model_actors} ({res.cpu_share:g} CPU{gpu} each), "
        f"CRF {res.crf_actors}"
    )


def _fmt(resources: dict) -> str:
    keep = {k: v for k, v in resources.items() if k in ("CPU", "GPU")}
    return ", ".join(f"{v:g} {k}" for k, v in sorted(keep.items())) or "nothing"


def waiting_for_resources() -> list[str]:
    """Actors and tasks that Ray has not placed yet, with the resources they ask for (Ray's state API,
    which needs the dashboard; empty without it)."""
    import ray

    try:
        from ray.util.state import list_actors, list_tasks

        address = ray.get_runtime_context().gcs_address  # this job's cluster, not any other on the machine
        actors = list_actors(
            address=address, filters=[("state", "=", "PENDING_CREATION")], detail=True, raise_on_missing_output=False
        )
        tasks = list_tasks(
            address=address,
            filters=[("state", "=", "PENDING_NODE_ASSIGNMENT")],
            detail=True,
            raise_on_missing_output=False,
        )
    except Exception:  # no dashboard (ray.init(include_dashboard=False)) or an older state API
        return []
    waiting = Counter()
    for actor in actors:
        waiting[f"{actor.class_name} actor needs {_fmt(actor.required_resources or {})}"] += 1
    for task in tasks:
        if task.required_resources and not task.name.endswith(".__init__"):  # (an actor's creation task
            # repeats the actor listed above; an actor method asks for nothing)
            waiting[f"{task.name} task needs {_fmt(task.required_resources or {})}"] += 1
    return [f"{n} x {what}" for what, n in sorted(waiting.items())]
