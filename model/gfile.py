"""Small text files of a directory (local or ``gs://``), through ``tf.io.gfile``: the one way the model
side reads and writes its JSON contracts (``config.json``, ``features_spec.json``, ``stats.json``,
``history.json``, an export's metadata)."""
from __future__ import annotations

import json
from typing import Any, Optional


def join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


def write_text(path: str, text: str) -> None:
    import tensorflow as tf
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


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
