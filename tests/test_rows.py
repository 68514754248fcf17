"""pipeline.rows: the per-row status / error bookkeeping every stage shares."""

import numpy as np

from pipeline.rows import RowStatus, object_column


def _batch(statuses):
    return {
        "status": np.array(statuses, dtype=object),
        "error": np.array(["" if s == "ok" else "earlier" for s in statuses], dtype=object),
    }


def test_map_runs_ok_rows_only_and_turns_a_raising_row_into_an_error_row():
    rows = RowStatus(_batch(["ok", "ValueError", "ok", "ok"]), "step")
    calls = []

    def fn(i):
        calls.append(i)
        if i == 2:
            raise KeyError("boom")
        return i * 10

    out = rows.map(fn, empty=-1)
    assert calls == [0, 2, 3]
    assert out == [0, -1, -1, 30]
    cols = rows.columns()
    assert list(cols["status"]) == ["ok", "ValueError", "KeyError", "ok"]
    assert list(cols["error"]) == ["", "earlier", "step: 'boom'", ""]
    assert cols["status"].dtype == object and cols["error"].dtype == object


def test_map_names_the_failing_row_when_asked():
    rows = RowStatus(_batch(["ok"]), "read")
    rows.map(lambda i: 1 / 0, empty=None, what=lambda i: f"read row{i}")
    assert rows.errors == ["read row0: division by zero"] and rows.status == ["ZeroDivisionError"]


def test_object_column_keeps_arrays_of_any_shape_as_single_elements():
    col = object_column([np.zeros((2, 3)), np.zeros((4, 4)), b"x"])
    assert col.shape == (3,) and col.dtype == object
    assert col[0].shape == (2, 3) and col[1].shape == (4, 4) and col[2] == b"x"
    same = object_column([np.zeros((2, 2)), np.zeros((2, 2))])
    assert same.shape == (2,)  # np.array() would have made a (2, 2, 2) float array
