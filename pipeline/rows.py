"""Per-row results of a batch stage: the ``status`` / ``error`` columns and object columns.

Every stage of the chains works on ``dict[str, np.ndarray]`` batches whose rows carry a
``status`` ("ok" or the class of the exception that stopped the row) and an ``error``
(the message). A stage works on the rows that are still "ok"; a row that makes it fail
becomes an error row, and the rest of the batch goes on. Rows already in error pass
through untouched, so the writer can put every input's outcome somewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def object_column(values: Iterable[Any]) -> np.ndarray:
    """A 1-D object array of ``values`` (arrays of different shapes stay one element each)."""
    values = list(values)
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


class RowStatus:
    """The ``status`` / ``error`` columns of one batch, as lists the stage updates.

    Args:
        batch: the stage's input batch (its ``status`` and ``error`` columns are read).
        step: the stage's name, the prefix of the error messages it records.
    """

    def __init__(self, batch: dict[str, np.ndarray], step: str) -> None:
        self.status = [str(s) for s in batch["status"]]
        self.errors = [str(e) for e in batch["error"]]
        self.step = step

    def ok_rows(self) -> list[int]:
        """Indices of the rows still "ok"."""
        return [i for i, s in enumerate(self.status) if s == "ok"]

    def fail(self, i: int, exc: BaseException, what: str | None = None) -> None:
        """Row ``i`` becomes an error row: status = the exception's class, error = "<what>: <message>"."""
        self.status[i], self.errors[i] = type(exc).__name__, f"{what or self.step}: {exc}"

    def map(self, fn: Callable[[int], Any], empty: Any, what: Callable[[int], str] | None = None) -> list[Any]:
        """``fn(i)`` for every "ok" row, ``empty`` for the others; a row whose ``fn`` raises gets ``empty`` and
        becomes an error row (``what(i)``, default the step's name, prefixes its message)."""
        results = [empty] * len(self.status)
        for i in self.ok_rows():
            try:
                results[i] = fn(i)
            except Exception as exc:  # one bad row never fails its batch: it becomes an error row
                self.fail(i, exc, what(i) if what else None)
        return results

    def columns(self) -> dict[str, np.ndarray]:
        """The updated ``status`` and ``error`` columns."""
        return {"status": np.array(self.status, dtype=object), "error": np.array(self.errors, dtype=object)}
