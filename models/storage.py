"""File and URL helpers: paths and URLs alike, reads, and writes that are either complete or absent.

Every path in the project may be a local path or any fsspec URL (``s3://``, ``gs://``,
``memory://``...): :func:`join`, :func:`exists`, :func:`read_url`, :func:`url_to_fs`
and :func:`to_url` treat both alike (no ``os.path`` rules on URLs).

Every writer in the project (checkpoints, masks, Parquet parts, reports, caches)
goes through :func:`atomic_write`, so a crash mid-write never leaves a half file
that a later run would take for a finished one. A local file gets the mode a plain
``open(path, "wb")`` gives it (0666 less the process's umask, or the folder's default
ACL), so other users and services can read outputs on shared storage when the umask
lets them.

Storage fails transiently (a dropped connection, a timeout, an overloaded store):
``atomic_write`` retries such errors a bounded number of times with exponential
backoff (:func:`retry_transient`). Errors that another try cannot fix (permission
denied, no such folder, read-only or full disk, name too long) are raised at once.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import secrets
import time
from collections.abc import Callable
from typing import TypeVar

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_ATTEMPTS = 5  # tries per operation (1 + 4 retries)
RETRY_BASE_DELAY = 0.25  # seconds before the first retry; doubled each time (0.25, 0.5, 1, 2), jittered
RETRY_MAX_DELAY = 4.0
# OSErrors that say something about the target, not about the moment: retrying cannot help.
PERMANENT_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
        errno.EROFS,
        errno.ENAMETOOLONG,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EINVAL,
    }
)


def join(root: str, *parts: str) -> str:
    """``root/part/...`` for a local path or a URL (no ``os.path`` rules on URLs)."""
    return "/".join([root.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(url: str) -> bool:
    fs, path = url_to_fs(url)
    return fs.exists(path)


def read_url(url: str) -> bytes:
    """The whole content of a file at a local path or URL (no retry: see :func:`retry_transient`)."""
    with fsspec.open(url, "rb") as f:
        return f.read()


def to_url(fs, path: str) -> str:
    """A path of ``fs`` as the user would write it: plain for local files, ``proto://...`` otherwise."""
    if isinstance(fs, LocalFileSystem):
        return path
    return fs.unstrip_protocol(path)


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: I/O, connection and timeout errors, not a bad target.

    OSErrors are transient unless their errno is in ``PERMANENT_ERRNOS`` (or they are
    ``PermissionError``, ``FileNotFoundError``...). Client libraries whose connection
    errors are not OSErrors (botocore's ``EndpointConnectionError``, ``ReadTimeoutError``,
    aiohttp's ``ServerDisconnectedError``...) are recognised by "Connection"/"Timeout"/
    "Disconnected" in a class name, without importing them.
    """
    if isinstance(exc, (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError)):
        return False
    if isinstance(exc, OSError):
        return exc.errno not in PERMANENT_ERRNOS
    names = (c.__name__ for c in type(exc).__mro__)
    return any(word in name for name in names for word in ("Connection", "Timeout", "Disconnected"))


def retry_transient(fn: Callable[[], T], what: str, attempts: int = RETRY_ATTEMPTS) -> T:
    """``fn()``, retried with exponential backoff while it raises transient errors (:func:`is_transient`).

    Args:
        fn: the operation; it must be safe to repeat (a whole-file write or read).
        what: what it does, for the log line of each retry and the note on the final error.
        attempts: total tries, at least 1.
    """
    attempts = max(1, attempts)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt >= attempts:
                exc.add_note(f"{what}: gave up after {attempts} attempts")
                raise
            delay = min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            log.warning(
                "%s failed (%s: %s); retry %d of %d in %.2f s",
                what,
                type(exc).__name__,
                exc,
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)


def atomic_write(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` so that the file is either complete or absent; retry transient errors.

    Local files: written to a temporary file in the same folder, then renamed over
    the target (atomic on POSIX). Object stores (s3://, gs://...) publish an object
    only when its upload completes, so one ``pipe_file`` call is already atomic; on a
    filesystem where a failed ``pipe_file`` can leave a partial file, that file is
    removed before the next try and after the last one.
    """
    fs, path = url_to_fs(url)
    retry_transient(lambda: _write_once(fs, path, data), what=f"write {url}")


def _write_once(fs, path: str, data: bytes) -> None:
    if isinstance(fs, LocalFileSystem):
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = _create_temp(directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return
    try:
        fs.pipe_file(path, data)
    except BaseException:
        _discard_partial(fs, path, len(data))
        raise


def _create_temp(directory: str) -> tuple[int, str]:
    # Not tempfile.mkstemp: it creates files 0600 whatever the umask, and the rename keeps that mode.
    # Opening with 0666 lets the kernel apply the umask (or the folder's default ACL) as open() does.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", directory)


def _discard_partial(fs, path: str, size: int) -> None:
    # A file of another size than the data is partial (or an older version that the
    # retry would have replaced anyway); one of the right size is left alone.
    try:
        fs.invalidate_cache(path)
        if fs.exists(path) and fs.size(path) != size:
            fs.rm_file(path)
    except Exception as exc:  # the store is failing; the next attempt (or the caller) will see it
        log.warning("could not remove a possibly partial %s: %s: %s", path, type(exc).__name__, exc)
