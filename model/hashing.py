"""Streamed SHA-256 of a local or ``gs://`` file (tf.io.gfile), without reading it whole."""
from __future__ import annotations

import hashlib

_CHUNK = 1 << 20


def sha256_file(path: str) -> str:
    import tensorflow as tf
    h = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)
