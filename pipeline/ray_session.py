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


def ensure_ray(address: str | None = None) -> None:
    """Connect to ``address``, else ``$RAY_ADDRESS``, else start a local Ray; no-op when connected."""
    import ray

    if ray.is_initialized():
        return
    if address is None and not os.environ.get("RAY_ADDRESS"):
        address = "local"
    ray.init(address=address)
