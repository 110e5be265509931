"""The one table of input formats: which reader a path or glob goes to, from its name.

``files`` (loose images), ``tar`` (WebDataset-layout archives) and ``tfrecord`` (TFRecord shards of
image ``tf.train.Example``s); ``--input-format auto`` picks one per path from the suffixes below. Both
:mod:`pipelines.sources` (per glob) and :mod:`pipelines.shards.transforms` (per matched file) ask here,
so they cannot disagree.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

FORMATS = ("files", "tar", "tfrecord")
INPUT_FORMATS = FORMATS + ("auto",)
SHARD_FORMATS = ("tar", "tfrecord")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")  # what `pack` packs and a tar member counts as an image
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecord.gz", ".tfrecords", ".tfrecords.gz", ".tfr", ".tfr.gz")
GZIP_SUFFIXES = (".gz", ".tgz")


def detect_format(path: str) -> str:
    """``tar`` / ``tfrecord`` from a path's (or glob's) suffix, ``files`` otherwise (loose images)."""
    name = path.lower()
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if name.endswith(TFRECORD_SUFFIXES):
        return "tfrecord"
    return "files"


def check_input_format(input_format: str) -> str:
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"--input-format must be one of {', '.join(INPUT_FORMATS)}, got {input_format!r}")
    return input_format


def resolve_format(path: str, input_format: str = "auto") -> str:
    """The reader for ``path``: ``input_format`` itself, or :func:`detect_format` for ``auto``."""
    check_input_format(input_format)
    return detect_format(path) if input_format == "auto" else input_format


def split_by_format(patterns: Sequence[str], input_format: str) -> Dict[str, List[str]]:
    """Group globs by the reader that handles them."""
    check_input_format(input_format)
    groups: Dict[str, List[str]] = {}
    for pattern in patterns:
        groups.setdefault(resolve_format(pattern, input_format), []).append(pattern)
    return groups


def is_gzip_name(path: str) -> bool:
    return path.lower().endswith(GZIP_SUFFIXES)
