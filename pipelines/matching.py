"""``MatchPaths``: globs (local or ``gs://``) -> the distinct file paths they match, on the workers."""
from __future__ import annotations

import os
import re
from typing import Iterator, Sequence

import apache_beam as beam
from apache_beam.io import fileio

from captionbeam.pipelines.formats import IMAGE_EXTENSIONS, TAR_SUFFIXES, TFRECORD_SUFFIXES
from captionbeam.pipelines.user_files import file_problem  # noqa: F401  (the one check; re-exported)

# names a reader would read: a directory with such a name was meant as input and is reported
_INPUT_NAMES = IMAGE_EXTENSIONS + TAR_SUFFIXES + TFRECORD_SUFFIXES


def matched_inputs(patterns: Sequence[str]) -> list[str]:
    """Every file the globs match, sorted, once: Beam's match plus what it leaves out silently
    (:func:`unlisted_local_matches`, which the readers dead-letter)."""
    import captionbeam.pipelines.io as pio
    found = set(pio.match(list(patterns)))
    for pattern in patterns:
        found.update(unlisted_local_matches(pattern))
    return sorted(found)


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
