"""Small text files of a directory (local or ``gs://``), through ``tf.io.gfile``: the one way the model
side reads and writes its JSON contracts (``config.json``, ``features_spec.json``, ``stats.json``,
``history.json``, an export's metadata). Every write commits atomically (:func:`commit_path`): a kill
or a full disk leaves the old file or the new one, never a truncated one."""
from __future__ import annotations

import errno
import json
import os
import uuid
from contextlib import contextmanager
from typing import Any, Iterator, Optional


def join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


@contextmanager
def commit_path(path: str) -> Iterator[str]:
    """``with commit_path(p) as tmp: write tmp`` -> ``tmp`` replaces ``p`` in one rename when the block
    ends without error; on error the temporary is removed and ``p`` is untouched. The temporary is
    run-private (``<dir>/.tmp-<token>-<name>``, so the name keeps its suffix, e.g. ``.weights.h5``) and a
    reader holding ``p`` open never blocks the writer. On ``gs://`` an upload is atomic already: ``p``
    itself is yielded."""
    if "://" in path:
        yield path
        return
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex[:12]}-{name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e):
            raise OSError(errno.ENOSPC, "No space left on device (nothing committed)", path) from e
        raise


def write_text(path: str, text: str) -> None:
    import tensorflow as tf
    with commit_path(path) as tmp:
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(text)
            f.flush()


def read_text(path: str, missing: Optional[str] = None) -> Optional[str]:
    """The file's text; when it does not exist, ``FileNotFoundError(missing)`` if ``missing`` is given,
    else None."""
    import tensorflow as tf
    if not tf.io.gfile.exists(path):
        if missing is not None:
            raise FileNotFoundError(missing)
        return None
    with tf.io.gfile.GFile(path, "r") as f:
        return f.read()


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def read_json(path: str, missing: Optional[str] = None) -> Any:
    """Parsed JSON of the file; None when it does not exist (or ``FileNotFoundError(missing)``)."""
    text = read_text(path, missing)
    return None if text is None else json.loads(text)
