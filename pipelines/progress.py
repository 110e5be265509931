"""Progress of a running Beam job, on every runner: total, done/total, percent, rate and ETA.

Beam's metrics are not live on every runner (the Python DirectRunner answers only once the job is
done; portable runners differ), so the count travels through a side channel of files:

- on the workers, :class:`CountProgress` counts the elements of a job's "done" PCollection (its
  finished items: rows written + dead letters, each named by its kind) and every DoFn instance rewrites
  one small JSON file ``{"done": n, "by": {kind: n}}`` in the job's progress folder
  (``<output>/.progress/<run>/``, reached through Beam's FileSystems like the output itself, so it works
  for local paths and ``gs://`` alike) at most every :data:`WRITE_EVERY_S` seconds and at the end of
  each bundle;
- in the job's own process, :class:`ProgressReporter` (a context manager around ``run`` +
  ``wait_until_finish``) logs the total when it is known, then every ``interval_s`` (≤ 10 s) sums the
  files and logs ``done/total (percent), rate, ETA``, and a last line when the job ends; it keeps the
  final sums per kind (``counts``: files, so exact where a runner's metrics are not: Prism loses a
  bundle's counters when two bundles report a metric it has not mapped yet) and removes the folder.

:func:`format_progress` and :func:`format_total` are the pure formatters.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from typing import Callable, Dict, Mapping, Optional, Sequence, Union

import apache_beam as beam

import captionbeam.pipelines.io as pio

log = logging.getLogger("captionbeam.progress")

PROGRESS_FOLDER = ".progress"
EXIT_DEADLINE_S = 30.0  # the end of a job waits at most this long for its last progress poll and cleanup
INTERVAL_S = 5.0        # the reporter's period: a line at least every 10 s even when a poll is slow
WRITE_EVERY_S = 2.0     # a worker rewrites its count at most this often (and at each bundle's end)
DONE = "done"           # the kind of an item counted without a name


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def format_total(job: str, total: int, unit: str = "images") -> str:
    return f"{job}: {total:,} {unit} to process"


def format_progress(job: str, done: int, total: Optional[int], elapsed_s: float, unit: str = "images") -> str:
    """``features: 120/600 images (20%), 12.0 images/s, ETA 0:00:40``; without a total (unknown until
    the input is read): ``captions: 120 captions, 12.0 captions/s``. A rate of 0 gives ``ETA ?``."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    if total is None:
        return f"{job}: {done:,} {unit}, {rate:,.1f} {unit}/s"
    shown = min(done, total)
    percent = 100.0 * shown / total if total else 100.0
    eta = format_duration((total - shown) / rate) if rate > 0 else ("0:00:00" if shown >= total else "?")
    return f"{job}: {shown:,}/{total:,} {unit} ({percent:.0f}%), {rate:,.1f} {unit}/s, ETA {eta}"


def progress_dir(output: str, run: Optional[str] = None) -> str:
    """The progress folder of one run of a job writing into ``output``."""
    return pio.join(output, PROGRESS_FOLDER, run or pio.run_token())


class _CountFn(beam.DoFn):
    """Counts the elements it sees as ``kind`` into its own progress file."""

    def __init__(self, directory: str, kind: str = "", write_every_s: float = WRITE_EVERY_S):
        self.directory, self.kind, self.write_every_s = directory, kind or DONE, write_every_s

    def setup(self):
        self.path = pio.join(self.directory, f"{uuid.uuid4().hex}.json")
        self.done, self.by, self.written_at = 0, {}, 0.0

    def process(self, _element):
        self.done += 1
        self.by[self.kind] = self.by.get(self.kind, 0) + 1
        if time.monotonic() - self.written_at >= self.write_every_s:
            self._write()
        return []

    def finish_bundle(self):
        self._write()

    def _write(self):
        try:
            pio.write_text(self.path, json.dumps({"done": self.done, "by": self.by}))
        except Exception as e:  # noqa: BLE001 - progress is best effort, never a job failure
            log.debug("progress file %s: %s", self.path, e)
        self.written_at = time.monotonic()


class CountProgress(beam.PTransform):
    """``PCollection`` of finished items -> nothing; counts them as ``kind`` into ``directory`` (see module
    doc), in the stage that produces them."""

    def __init__(self, directory: str, kind: str = ""):
        super().__init__()
        self.directory, self.kind = directory, kind

    def expand(self, done):
        return done | "Count" >> beam.ParDo(_CountFn(self.directory, self.kind))


def count_done(parts: Union[Sequence[beam.PCollection], Mapping[str, beam.PCollection]],
               directory: Optional[str]) -> None:
    """A job's hook: count each of ``parts`` (its finished items; a mapping names each part's kind, summed
    apart in :attr:`ProgressReporter.counts`) into ``directory``; nothing when ``directory`` is None (a
    pipeline built without a reporter, e.g. by a test). Each part is counted where it is produced, never
    behind a union: a Flatten of parts from different stages is a stage boundary on the DirectRunner, and a
    count behind it would only move once the whole producing stage is done."""
    if directory:
        named = list(parts.items()) if isinstance(parts, Mapping) else [(DONE, part) for part in parts]
        for i, (kind, part) in enumerate(named):
            _ = part | f"Progress{i}" >> CountProgress(directory, kind)


def files_total(patterns: Sequence[str], input_format: str = "files") -> Optional[int]:
    """How many files the globs name (what ``matching.MatchPaths`` yields), when every glob is read as
    plain image files; None for tar / TFRecord shards, whose member count is known only once read."""
    from captionbeam.pipelines.formats import split_by_format
    from captionbeam.pipelines.matching import matched_inputs
    groups = split_by_format(patterns, input_format)
    if set(groups) != {"files"}:
        return None
    try:
        found = matched_inputs(patterns)
    except Exception as e:  # noqa: BLE001 - the job reports bad globs itself
        log.debug("progress total: %s", e)
        return None
    return len(found)


def _read_files(directory: str, last: Dict[str, dict]) -> Dict[str, dict]:
    """``last`` (path -> the worker file's content) updated from ``directory``; a file being rewritten
    (unreadable for a moment) keeps its previous value."""
    try:
        paths = pio.match([pio.join(directory, "*.json")])
    except Exception:  # noqa: BLE001 - no folder yet
        paths = []
    for path in paths:
        try:
            value = json.loads(pio.read_text(path))
            by = {str(kind): int(n) for kind, n in value.get("by", {}).items()}
            last[path] = {"done": int(value["done"]), "by": by}
        except Exception:  # noqa: BLE001 - half-written: keep the previous value
            pass
    return last


def read_done(directory: str, last: Optional[Dict[str, dict]] = None) -> int:
    """Sum of the workers' counts in ``directory``; ``last`` (path -> content) keeps a file's previous
    value when it is being rewritten (unreadable for a moment)."""
    return sum(v["done"] for v in _read_files(directory, {} if last is None else last).values())


def read_counts(directory: str, last: Optional[Dict[str, dict]] = None) -> Dict[str, int]:
    """The workers' counts in ``directory`` summed per kind (see :func:`count_done`)."""
    sums: Dict[str, int] = {}
    for value in _read_files(directory, {} if last is None else last).values():
        for kind, n in value["by"].items():
            sums[kind] = sums.get(kind, 0) + n
    return sums


class ProgressReporter:
    """``with ProgressReporter("features", directory, total): result = p.run(); result.wait_until_finish()``

    Logs the total first (when known), a progress line every ``interval_s`` while the job runs, and a
    last one when the block ends; then deletes ``directory``'s files. ``emit`` receives each line.
    ``counts``: the final sums per kind once a block that succeeded has ended (None before, after a
    failure, or when the storage did not answer in time)."""

    def __init__(self, job: str, directory: str, total: Optional[int], unit: str = "images",
                 interval_s: float = INTERVAL_S, emit: Optional[Callable[[str], None]] = None):
        self.job, self.directory, self.total, self.unit = job, directory, total, unit
        self.interval_s = interval_s
        self.emit = emit or log.info
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._counts: Dict[str, dict] = {}
        self._t0 = 0.0
        self.counts: Optional[Dict[str, int]] = None

    def line(self) -> str:
        done = read_done(self.directory, self._counts)
        return format_progress(self.job, done, self.total, time.monotonic() - self._t0, self.unit)

    def _loop(self):
        while not self._stop.wait(self.interval_s):
            self.emit(self.line())

    def __enter__(self) -> "ProgressReporter":
        self._t0 = time.monotonic()
        if self.total is not None:
            self.emit(format_total(self.job, self.total, self.unit))
        self._thread = threading.Thread(target=self._loop, name=f"{self.job}-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Bounded: with the storage gone (a failed job on a dead bucket) the reporter's last poll and the
        cleanup may be stuck in the client's retries; the job's own outcome must not wait for them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(EXIT_DEADLINE_S)
        finish = threading.Thread(target=self._finish, args=(exc_type is None,), name=f"{self.job}-progress-end",
                                  daemon=True)
        finish.start()
        finish.join(EXIT_DEADLINE_S)
        if finish.is_alive():
            log.debug("progress folder %s: cleanup still waiting on storage; left behind", self.directory)

    def _finish(self, succeeded: bool) -> None:
        if succeeded:
            self.emit(self.line())
            self.counts = read_counts(self.directory, self._counts)
        try:
            pio.delete(pio.match([pio.join(self.directory, "*.json")]))
            if not pio.is_gcs(self.directory):
                shutil.rmtree(self.directory, ignore_errors=True)
                parent = os.path.dirname(self.directory.rstrip("/"))
                if os.path.isdir(parent) and not os.listdir(parent):
                    os.rmdir(parent)
        except Exception as e:  # noqa: BLE001 - a leftover progress file is harmless
            log.debug("progress folder %s: %s", self.directory, e)
