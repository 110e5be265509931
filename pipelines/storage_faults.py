"""Storage faults as one clear line: a full disk, a read-only or locked file, an unreachable bucket
endpoint. :func:`explain` walks an exception and its causes (Beam re-raises a worker's error wrapped
in its own) and returns the message the CLI prints instead of a traceback, naming the path or the
endpoint; None when the failure is not a storage fault.

Deadlines: every ``gs://`` call goes through google-cloud-storage with a 60 s socket timeout per
request and retries for at most 120 s (``google.cloud.storage.retry.DEFAULT_RETRY``, which Beam's
GcsIO uses), so one read or write against a dead endpoint fails within 120-180 s; a job fails at its
first such call. The lease's own calls at the end of a run are bounded by :data:`RELEASE_DEADLINE_S`.

Some calls retry far longer (a resumable upload's own policy allows ten minutes), so a run whose output is
in a bucket is also watched by its lease: when the lease's heartbeat gets no answer for
:func:`storage_deadline_s` seconds (default 150, ``$CAPTIONBEAM_STORAGE_DEADLINE_S``), the run ends at once
with exit 1 and one line naming the endpoint (nothing it wrote is committed: commits happen under a
live lease). So a dead endpoint ends a job within about ``deadline + deadline / 3`` seconds.
"""
from __future__ import annotations

import errno
import os
import re
from typing import Iterator, Optional

RETRY_DEADLINE_S = 120       # google.cloud.storage.retry.DEFAULT_RETRY's deadline (one call, all retries)
REQUEST_TIMEOUT_S = 60       # google.cloud.storage's default timeout per request
RELEASE_DEADLINE_S = 30      # the lease release at the end of a run waits at most this long
DEFAULT_STORAGE_DEADLINE_S = 150.0   # a bucket output's lease heartbeat unanswered this long ends the run
STORAGE_DEADLINE_ENV = "CAPTIONBEAM_STORAGE_DEADLINE_S"


def storage_deadline_s(environ=os.environ) -> float:
    """How long a run waits for an unanswered bucket before it ends (``$CAPTIONBEAM_STORAGE_DEADLINE_S``)."""
    raw = environ.get(STORAGE_DEADLINE_ENV, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_STORAGE_DEADLINE_S
    except ValueError:
        raise ValueError(f"${STORAGE_DEADLINE_ENV}: {raw!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"${STORAGE_DEADLINE_ENV}: {raw!r} must be a positive number of seconds")
    return value

_DISK = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
         errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "not permitted",
         errno.EAGAIN: "locked by another process", errno.EIO: "input/output error"}
_TEXT = (("No space left on device", "no space left on the device"), ("Disk quota exceeded", "disk quota exceeded"),
         ("Read-only file system", "read-only file system"),
         ("Resource temporarily unavailable", "locked by another process"))
_UNREACHABLE = re.compile(r"(Connection refused|Max retries exceeded|Failed to establish a new connection|"
                          r"Read timed out|RemoteDisconnected|Connection aborted|ServiceUnavailable|"
                          r"Name or service not known|Temporary failure in name resolution|RetryError|Timeout of [0-9.]+s exceeded)")
_PATH = re.compile(r"(gs://[^\s'\",;]+|/[^\s'\":,;]+)")


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _paths(text: str):
    """Paths named in an error text: ``gs://`` ones, and local ones whose folder exists other than ``/``
    itself (not Beam step names such as ``/Write``, nor TensorFlow's ``/job:localhost``)."""
    return [p for p in _PATH.findall(text) if p.startswith("gs://") or (
        len(p) > 1 and os.path.dirname(p) != "/" and os.path.isdir(os.path.dirname(p)))]


def endpoint() -> str:
    return os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"


def explain(e: BaseException, output: Optional[str] = None) -> Optional[str]:
    """The one-line message of a storage fault in ``e`` (or its causes), else None; ``output`` (the
    flag and path the command writes, e.g. ``--output /data/f``) is named when the error names no path."""
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno in _DISK and x.filename:
            return f"{x.filename}: {_DISK[x.errno]} ({x.strerror}); nothing was committed there by this run"
    for x in _chain(e):
        text = str(x)
        for needle, what in _TEXT:
            if needle in text:
                paths = _paths(text)
                where = f"{paths[0]}: " if paths else (f"writing {output}: " if output else "")
                return f"{where}{what}; nothing was committed there by this run"
        if _UNREACHABLE.search(text) or type(x).__name__ in ("ConnectionError", "ServiceUnavailable",
                                                               "RetryError", "ConnectTimeout", "ReadTimeout"):
            paths = [p for p in _paths(text) if p.startswith("gs://")]
            return (f"storage endpoint {endpoint()} unreachable{' (' + paths[0] + ')' if paths else ''}: gave up "
                    f"after up to {RETRY_DEADLINE_S}s of retries per call ({type(x).__name__}); re-run when it is "
                    f"back (outputs are committed atomically: nothing half-written is kept)")
    return None
