"""Joining or starting the Ray instance a job runs on.

Inside ``ray job submit`` Ray sets ``RAY_ADDRESS`` and the job joins that cluster.
Run directly (``python jobs/...``) without ``--ray-address``, a job starts a private
local Ray instead of joining whatever ``/tmp/ray/ray_current_cluster`` names: that
file can point at a crashed cluster, and joining it hangs for minutes.
"""

from __future__ import annotations

import argparse
import os


def add_ray_address_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join ('auto' = the one `ray start` runs here); default: $RAY_ADDRESS "
        "(set by `ray job submit`), else a new local Ray",
    )


def add_cluster_guard_args(p: argparse.ArgumentParser, stall_minutes: float = 30.0) -> None:
    """``--stall-minutes`` and ``--autoscaling``, the same for every job that runs the Ray Data chain."""
    p.add_argument(
        "--stall-minutes",
        type=float,
        default=stall_minutes,
        help="stop with exit 6 when no image has finished for this long (what was written is kept, a rerun "
        f"resumes); 0 waits forever; default {stall_minutes:g}. Raise it where new nodes take longer to start",
    )
    p.add_argument(
        "--autoscaling",
        action="store_true",
        help="the cluster adds nodes on demand (ray up cluster.yaml): don't refuse it at start for what its "
        "nodes lack now (no CPUs, fewer GPUs than model actors); the stall guard still applies",
    )


def disable_usage_stats() -> None:
    """Keep a Ray that this process starts from reporting usage statistics to Ray's server.

    Ray's dashboard otherwise posts them over the internet about a minute after start, so a
    job on a machine without internet (or that must open no connection of its own) would try
    to. ``RAY_USAGE_STATS_ENABLED`` is read by the processes ``ray.init`` starts (they inherit
    this environment); a user who sets it to 1 keeps their choice. A cluster started with
    ``ray start`` decides for itself (``--disable-usage-stats``, as ``pipeline.demo.local_head`` does).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def ensure_ray(address: str | None = None) -> None:
    """Connect to ``address``, else ``$RAY_ADDRESS``, else start a local Ray; no-op when connected.

    A local Ray started here reports no usage statistics (:func:`disable_usage_stats`).
    """
    import ray

    if ray.is_initialized():
        return
    disable_usage_stats()
    if address is None and not os.environ.get("RAY_ADDRESS"):
        address = "local"
    ray.init(address=address)
