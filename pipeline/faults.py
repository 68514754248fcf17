"""Fault injection for the reliability tests (``tests/test_faults.py``); inert unless a test arms it.

Nothing happens unless the environment variable ``DECONVSEG_TEST_FAULTS`` names a
folder (a test sets it before starting Ray, so every worker process inherits it).
A test then arms a fault at a named point by writing ``<folder>/<point>.json``:

- ``{"kill_at_call": 3}``: the process making the 3rd call of ``inject(point)``,
  counted across all processes, exits at once (``os._exit``: to Ray this looks like
  an OOM kill, a segfault or a lost node); every other call passes;
- ``{"kill_on_id": "x.jpg"}``: every call whose ``ids`` include ``x.jpg`` kills its
  process (an input that crashes its worker each time it is tried).

Each kill first leaves ``<folder>/<point>.killed-<n>``, so a test can check that its
fault really happened. Points, each at the start of its stage's call unless said:
``read_task`` (``decode.read_files``), ``decode_task`` (``decode.decode_images``),
``proposal_batch`` (``ProposalStage``), ``model_batch`` (``Segmenter``), ``crf_batch``
(``CRFStage``) and ``write_rows`` (``write_outputs``, after the PNGs, before the Parquet
rows). In the split layout each point runs in its own task or actor; in the fused layout
the decode, proposal, model and CRF points all run in the fused actor.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

ENV = "DECONVSEG_TEST_FAULTS"
KILL_EXIT_CODE = 77


def inject(point: str, ids: Iterable = ()) -> None:
    """Kill this process if the fault armed at ``point`` says so (no-op when none is armed)."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    try:
        with open(os.path.join(folder, f"{point}.json")) as f:
            spec = json.load(f)
    except FileNotFoundError:
        return
    call = _ticket(folder, f"{point}.call")
    if call == spec.get("kill_at_call") or spec.get("kill_on_id") in {str(i) for i in ids}:
        _ticket(folder, f"{point}.killed")
        os._exit(KILL_EXIT_CODE)


def _ticket(folder: str, prefix: str) -> int:
    """The next number of a counter shared by all processes (exclusive creation of ``<prefix>-<n>``)."""
    n = 1
    while True:
        try:
            os.close(os.open(os.path.join(folder, f"{prefix}-{n}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return n
        except FileExistsError:
            n += 1
