"""Writing files that are either complete or absent, locally or on any fsspec URL.

Every writer in the project (checkpoints, masks, Parquet parts, reports, caches)
goes through :func:`atomic_write`, so a crash mid-write never leaves a half file
that a later run would take for a finished one.
"""

from __future__ import annotations

import os
import tempfile

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem


def atomic_write(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` so that the file is either complete or absent.

    Local files: written to a temporary file in the same folder, then renamed over
    the target (atomic on POSIX). Object stores (s3://, gs://...) publish an object
    only when its upload completes, so one ``pipe_file`` call is already atomic.
    """
    fs, path = url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        fs.pipe_file(path, data)
