"""``MatchPaths``: globs (local or ``gs://``) -> the distinct file paths they match, on the workers."""
from __future__ import annotations

from typing import Sequence

import apache_beam as beam
from apache_beam.io import fileio


class MatchPaths(beam.PTransform):
    """Pipeline root -> ``PCollection[str]`` of matched file paths.

    Matching runs in ``fileio.MatchAll`` (on the workers; a glob that matches nothing is allowed here:
    the command line checks up front that the globs match something). Paths matched by several globs
    come out once (a ``Distinct``, which also spreads the paths over workers: a shuffle). Directories
    (and gs:// ``dir/`` placeholder objects) are skipped."""

    def __init__(self, patterns: Sequence[str]):
        super().__init__()
        self.patterns = list(patterns)

    def expand(self, pbegin):
        return (pbegin
                | "Patterns" >> beam.Create(self.patterns)
                | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
                | "Path" >> beam.Map(lambda m: m.path)
                | "SkipDirectories" >> beam.Filter(lambda p: not p.endswith("/"))
                | "Dedupe" >> beam.Distinct())
