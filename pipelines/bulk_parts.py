"""A bulk run in committed parts (``captionbeam bulk --commit-every N``): resumable and memory-bounded
however large the archive.

One bulk pipeline commits its rows when it ends: a run over a million photos killed at 90 % would leave
nothing a re-run can skip, and the in-process runner's bookkeeping grows with the archive. With
``--commit-every N`` the launcher lists the inputs once (sorted), splits them into parts of ``N`` input
files (loose images or tar / TFRecord shards) and runs the bulk pipeline on each part in turn, all under
the output's one lease. Each part is a run of its own, ``<run>-pNNNNN``, committed when it ends (its
rows, then its manifest, then ``runs/<run>-pNNNNN.json``), so:

* a killed run loses at most the part it was in; the re-run (``--force`` if within the dead lease's
  15 minutes) recovers that part's finalised files (:func:`pipelines.bulk.recover_unfinished_runs`) and
  skips every committed image through the manifest, as any re-run does;
* memory is bounded by the part: a part joins only the manifest files that can hold its inputs
  (:func:`manifests_for_part`) and, from those, only its inputs' entries
  (:class:`pipelines.manifest.ReadManifest` ``inputs``);
* progress is known up front: after each part, one line with the files and images done, the rate and
  an ETA over the listed files.

``runs/<run>.json`` of the whole run lists its parts and sums their counters.
"""
from __future__ import annotations

import datetime as _dt
import logging
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import captionbeam.pipelines.io as pio

log = logging.getLogger(__name__)

PART_MARK = "-p"
_META = re.compile(r"([*?\[])")
_MANIFEST_FILE = re.compile(r"^manifest-(?P<run>.+?)-(?:\d{5}-of-\d{5}|recovered)\.jsonl$")


@dataclass(frozen=True)
class PartManifest:
    """What a part reads of the manifest: these files (:func:`manifests_for_part`), and in them only the
    entries of its own input files."""
    files: Tuple[str, ...]
    inputs: Tuple[str, ...]


def literal_pattern(path: str) -> str:
    """A glob that matches exactly ``path`` (Beam's patterns have no escape character: each glob
    metacharacter becomes a one-character class), so a listed file is read as itself."""
    return _META.sub(r"[\1]", path)


def part_token(run: str, index: int) -> str:
    return f"{run}{PART_MARK}{index:05d}"


def split_into_parts(files: Sequence[str], per_part: int) -> List[Tuple[str, ...]]:
    """Consecutive runs of ``per_part`` files (the last one shorter)."""
    if per_part < 1:
        raise ValueError(f"--commit-every must be >= 1, got {per_part}")
    return [tuple(files[i:i + per_part]) for i in range(0, len(files), per_part)]


def manifest_run(file_name: str) -> Optional[str]:
    """The run token in a manifest file's name (``manifest-<run>-SSSSS-of-NNNNN.jsonl`` or
    ``manifest-<run>-recovered.jsonl``); None for a name of another shape."""
    m = _MANIFEST_FILE.match(file_name)
    return m.group("run") if m else None


def manifests_for_part(manifest_files: Sequence[str], records: Dict[str, dict], inputs: Sequence[str]) -> List[str]:
    """The manifest files that can hold entries of ``inputs``: those of part runs over any of the same
    files, and every other file (a run over globs, a recovered run, a name not of a run, a run without a
    record): reading one too many costs time, skipping one would caption its images twice."""
    wanted = set(inputs)
    keep = []
    for path in manifest_files:
        record = records.get(manifest_run(pio.basename(path)) or "")
        part = (record or {}).get("part")
        if part and not wanted.intersection(part.get("files", ())):
            continue
        keep.append(path)
    return keep


def read_run_records(runs_glob: str) -> Dict[str, dict]:
    """The run records ``runs/<run>.json`` matching ``runs_glob``, by run token (unreadable ones left out:
    their manifests are then read, the safe direction)."""
    records = {}
    for path in pio.match([runs_glob]):
        try:
            record = pio.read_json(path)
        except Exception as e:  # noqa: BLE001 - a damaged record only costs reading more manifest
            log.warning("bulk: cannot read run record %s (%s): its manifest files are all read", path, e)
            continue
        if isinstance(record, dict) and isinstance(record.get("run"), str):
            records[record["run"]] = record
    return records


@dataclass
class PartsProgress:
    """Files and images done over the listed files, for the line logged after each part."""
    files_total: int
    parts_total: int
    started: float
    files_done: int = 0
    images_done: int = 0
    captioned: int = 0

    def line(self, part: int, files: int, counters: Dict[str, int], now: float) -> str:
        self.files_done += files
        self.images_done += counters.get("matched", 0)
        self.captioned += counters.get("captioned", 0)
        took = max(now - self.started, 1e-9)
        rate = self.images_done / took
        left = took * (self.files_total - self.files_done) / max(self.files_done, 1)
        eta = _dt.timedelta(seconds=round(left))
        return (f"bulk: part {part + 1}/{self.parts_total} committed: {self.files_done:,}/{self.files_total:,} "
                f"files, {self.images_done:,} images ({self.captioned:,} captioned), {rate:,.1f} images/s, "
                f"ETA {eta}")
