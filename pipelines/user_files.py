"""The one reader of users' files: every image or archive a user names (``features``, ``bulk``, ``pack``,
``caption``, ``retrain``'s hashing of landed files, the shard readers) is opened here and nowhere else
(``tests/test_imports.py`` fails on a module that opens a path around it).

* **Regular files only.** :func:`file_problem` looks at a local path before it is opened: a FIFO would
  block the reader forever, a device never ends, a directory, a dangling or looping symlink cannot be
  read. Each is a :class:`UserFileError` with a stable ``error`` code (the dead-letter reason).
* **One byte limit.** :func:`read_user_file` and :func:`sha256_user_file` never read past ``max_bytes``
  (``--max-bytes``, default :data:`~pipelines.image_items.DEFAULT_MAX_BYTES`): a sparse 3 GiB file is
  refused from its size, a ``gs://`` object (whose size a stat may not tell) after ``max_bytes + 1`` bytes.
* Local paths and ``gs://`` through Beam's ``FileSystems`` (the tests' emulator included).

The pixel limit is :func:`pipelines.images.decode_image`'s ``max_pixels`` (checked from the header).
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
from typing import BinaryIO, Optional, Tuple

from captionbeam.pipelines.image_items import (BROKEN_LINK, DEFAULT_MAX_BYTES, NOT_REGULAR, SYMLINK_LOOP,
                                               TOO_LARGE)

NOT_FOUND = "not_found"
UNREADABLE_FILE = "unreadable"
_CHUNK = 1 << 20


class UserFileError(OSError):
    """A user's file that is not read: ``error`` is the dead-letter code, ``path`` the file."""

    def __init__(self, path: str, error: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path, self.error, self.message = path, error, message


def check_max_bytes(max_bytes: int) -> int:
    """The byte limit must be positive: there is no unbounded read (raise the limit for larger images)."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"--max-bytes must be a positive number of bytes, got {max_bytes!r} "
                         f"(default {DEFAULT_MAX_BYTES}: every read is bounded)")
    return max_bytes


def file_problem(path: str, max_bytes: Optional[int] = None) -> Optional[Tuple[str, str]]:
    """``(error code, message)`` when a path must not be opened: not a regular file, a dangling or looping
    symlink, or (``max_bytes``) a file over the byte limit. None when it may be read. Local paths only
    (``gs://`` objects are files; their size is bounded by the read)."""
    if "://" in path:
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return BROKEN_LINK, f"symlink to {os.readlink(path)!r}, which does not exist"
        return NOT_FOUND, "no such file"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return SYMLINK_LOOP, f"symlink loop: {e.strerror}"
        return UNREADABLE_FILE, f"{type(e).__name__}: {e}"
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else
                "a character device" if stat.S_ISCHR(st.st_mode) else "a block device" if stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        return NOT_REGULAR, f"{kind}{' (through a symlink)' if os.path.islink(path) else ''}: only regular files are read"
    if max_bytes is not None and st.st_size > max_bytes:
        return TOO_LARGE, f"file has {st.st_size} bytes, more than --max-bytes {max_bytes}"
    return None


def open_user_file(path: str, max_bytes: Optional[int] = None) -> BinaryIO:
    """A binary stream over a user's regular file (local or ``gs://``), bytes as stored; raises
    :class:`UserFileError` for anything :func:`file_problem` refuses (``max_bytes``: None for archives,
    whose members the shard readers bound)."""
    from apache_beam.io.filesystems import FileSystems
    problem = file_problem(path, max_bytes)
    if problem:
        raise UserFileError(path, *problem)
    try:
        return FileSystems.open(path, compression_type="uncompressed")
    except Exception as e:  # noqa: BLE001 - the path is named; the code says it was not read
        raise UserFileError(path, UNREADABLE_FILE, f"cannot open: {type(e).__name__}: {e}") from e


def _too_large(path: str, max_bytes: int) -> UserFileError:
    return UserFileError(path, TOO_LARGE, f"file is larger than --max-bytes {max_bytes}")


def read_user_file(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """A user's file's bytes, never more than ``max_bytes`` read (:class:`UserFileError` otherwise)."""
    check_max_bytes(max_bytes)
    chunks, seen = [], 0
    with open_user_file(path, max_bytes) as f:
        while seen <= max_bytes:    # in chunks: one read(max_bytes + 1) allocated the whole limit per file
            chunk = f.read(min(_CHUNK, max_bytes + 1 - seen))
            if not chunk:
                break
            chunks.append(chunk)
            seen += len(chunk)
    if seen > max_bytes:
        raise _too_large(path, max_bytes)
    return b"".join(chunks)


def sha256_user_file(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """SHA-256 of a user's file, streamed in 1 MiB chunks, never past ``max_bytes``."""
    check_max_bytes(max_bytes)
    h, seen = hashlib.sha256(), 0
    with open_user_file(path, max_bytes) as f:
        while True:
            chunk = f.read(min(_CHUNK, max_bytes + 1 - seen))
            if not chunk:
                return h.hexdigest()
            seen += len(chunk)
            if seen > max_bytes:
                raise _too_large(path, max_bytes)
            h.update(chunk)
