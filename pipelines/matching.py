"""``MatchPaths``: globs (local or ``gs://``) -> the distinct file paths they match, on the workers."""
from __future__ import annotations

import errno
import os
import re
import stat
from typing import Iterator, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io import fileio

from captionbeam.pipelines.formats import IMAGE_EXTENSIONS, TAR_SUFFIXES, TFRECORD_SUFFIXES
from captionbeam.pipelines.image_items import BROKEN_LINK, NOT_REGULAR, SYMLINK_LOOP, TOO_LARGE

# names a reader would read: a directory with such a name was meant as input and is reported
_INPUT_NAMES = IMAGE_EXTENSIONS + TAR_SUFFIXES + TFRECORD_SUFFIXES


def unlisted_local_matches(pattern: str) -> Iterator[str]:
    """Local paths a glob matches that Beam's match leaves out silently: dangling and looping symlinks
    (its listing cannot stat them) and directories named like an input (``x.jpg/``). Same prefix and
    pattern rules as Beam's match, so nothing else is added; the reader dead-letters each of these."""
    from apache_beam.io.filesystem import FileSystem
    if "://" in pattern:
        return
    prefix = re.match(r"^[^[*?]*", pattern).group(0)
    if prefix == pattern:
        candidates = [pattern] if os.path.lexists(pattern) else []
        roots = []
    else:
        roots, candidates = [os.path.dirname(prefix) if not os.path.isdir(prefix) else prefix], []
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            candidates += [os.path.join(dirpath, n) for n in dirs + files]
    matches = re.compile(FileSystem.translate_pattern(pattern)).match
    for path in candidates:
        if not matches(path):
            continue
        if os.path.islink(path) and not os.path.exists(path):
            yield path                                        # dangling or looping
        elif os.path.isdir(path) and path.lower().endswith(_INPUT_NAMES):
            yield path


def file_problem(path: str, max_bytes: Optional[int] = None) -> Optional[Tuple[str, str]]:
    """``(error code, message)`` when a matched path must not be opened: not a regular file (a FIFO would
    block the reader forever, a device never ends), a dangling or looping symlink, or (``max_bytes``) a
    file over the byte limit. None when it may be read. Local paths only (``gs://`` objects are files;
    their size is bounded by the reader)."""
    if "://" in path:
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return BROKEN_LINK, f"symlink to {os.readlink(path)!r}, which does not exist"
        return "not_found", "file vanished after it was matched"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return SYMLINK_LOOP, f"symlink loop: {e.strerror}"
        return "unreadable", f"{type(e).__name__}: {e}"
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else
                "a character device" if stat.S_ISCHR(st.st_mode) else "a block device" if stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        return NOT_REGULAR, f"{kind}{' (through a symlink)' if os.path.islink(path) else ''}: only regular files are read"
    if max_bytes is not None and st.st_size > max_bytes:
        return TOO_LARGE, f"file has {st.st_size} bytes, more than --max-bytes {max_bytes}"
    return None


class MatchPaths(beam.PTransform):
    """Pipeline root -> ``PCollection[str]`` of matched file paths.

    Matching runs in ``fileio.MatchAll`` (on the workers; a glob that matches nothing is allowed here:
    the command line checks up front that the globs match something). Paths matched by several globs
    come out once (a ``Distinct``, which also spreads the paths over workers: a shuffle). Directories
    (and gs:// ``dir/`` placeholder objects) are skipped, except local ones named like an input, which
    come out with the dangling / looping symlinks Beam's match drops (:func:`unlisted_local_matches`),
    for the reader to dead-letter: every path a glob names is accounted for."""

    def __init__(self, patterns: Sequence[str]):
        super().__init__()
        self.patterns = list(patterns)

    def expand(self, pbegin):
        patterns = pbegin | "Patterns" >> beam.Create(self.patterns)
        listed = (patterns
                  | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
                  | "Path" >> beam.Map(lambda m: m.path)
                  | "SkipDirectories" >> beam.Filter(lambda p: not p.endswith("/")))
        unlisted = patterns | "Unlisted" >> beam.FlatMap(unlisted_local_matches)
        return (listed, unlisted) | "AllMatches" >> beam.Flatten() | "Dedupe" >> beam.Distinct()
