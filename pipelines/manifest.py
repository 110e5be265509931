"""The bulk job's manifest: what has been captioned, per model version, keyed by (path, SHA-256).

Layout under a bulk ``--output`` directory (local or ``gs://``)::

    manifest/<model_version>/manifest-<run>-SSSSS-of-NNNNN.jsonl

one JSON object per captioned image: ``{"path", "sha256", "image_id", "run"}``. Every run writes
its own files (the run token is in the name), so nothing is ever rewritten; the manifest of a model
version is the union of all its files. A run writes its manifest only after its caption files are
finalised (see :class:`pipelines.bulk.BulkCaption`), so the manifest never names an image whose row
was not written.

``--skip-existing`` reads the manifest of the *same* model version only: a new model re-captions
everything. The anti-join against it is a ``CoGroupByKey`` keyed by path (see
:class:`SplitAlreadyCaptioned`), not a side-input dict, so it scales with the archive: no worker
holds the whole manifest in memory. The bulk job joins keys only (:class:`pipelines.image_keys.ImageKey`:
path, SHA-256, where to read it again), never image bytes, and reads the bytes again for what is left
to caption.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import FrozenSet, Iterable, Iterator, Optional, Sequence, Tuple

import apache_beam as beam

import captionbeam.pipelines.io as pio
from captionbeam.pipelines.counters import BULK_NAMESPACE

MANIFEST_DIR = "manifest"
MANIFEST_PREFIX = "manifest"
MANIFEST_SUFFIX = ".jsonl"
_VERSION_RE = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    sha256: str
    image_id: str
    run: str

    def to_json(self) -> str:
        return json.dumps({"path": self.path, "sha256": self.sha256, "image_id": self.image_id,
                           "run": self.run}, sort_keys=True)


def check_model_version(model_version: str) -> str:
    """Model versions name a directory: refuse anything that is not a plain token."""
    if not model_version or not _VERSION_RE.match(model_version):
        raise ValueError(f"model version {model_version!r} is not a plain token ([A-Za-z0-9._-]+)")
    return model_version


def manifest_dir(output: str, model_version: str) -> str:
    return pio.join(output, MANIFEST_DIR, check_model_version(model_version))


def manifest_glob(output: str, model_version: str) -> str:
    return pio.join(manifest_dir(output, model_version), f"{MANIFEST_PREFIX}-*{MANIFEST_SUFFIX}")


def manifest_prefix(output: str, model_version: str, run: str) -> str:
    """``file_path_prefix`` for this run's manifest shards."""
    return pio.join(manifest_dir(output, model_version), f"{MANIFEST_PREFIX}-{run}")


def parse_manifest_line(line: str) -> Tuple[str, str]:
    """``(path, sha256)`` of one manifest line; ValueError on a malformed line."""
    try:
        obj = json.loads(line)
        path, sha = obj["path"], obj["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"malformed manifest line {line[:200]!r}: {e}") from None
    if not isinstance(path, str) or not isinstance(sha, str) or len(sha) != 64:
        raise ValueError(f"malformed manifest line {line[:200]!r}: path/sha256 of the wrong type")
    return path, sha


def read_manifest_keys(output: str, model_version: str) -> Iterator[Tuple[str, str]]:
    """All (path, sha256) of a model version, read in this process (tests and small tools)."""
    for f in pio.match([manifest_glob(output, model_version)]):
        for line in pio.read_text(f).splitlines():
            if line.strip():
                yield parse_manifest_line(line)


def input_of(path: str, inputs: FrozenSet[str]) -> bool:
    """Whether a manifest ``path`` is one of ``inputs`` (loose files) or a member of one (a shard member's
    path is ``<shard>#<member>``; either part may itself hold ``#``)."""
    if path in inputs:
        return True
    at = path.find("#")
    while at != -1:
        if path[:at] in inputs:
            return True
        at = path.find("#", at + 1)
    return False


class _ParseManifest(beam.DoFn):
    """Malformed lines are counted and dropped (an image without a valid entry is captioned again,
    which is the safe direction). With ``inputs``, entries of other files are dropped here, before the
    join: a part of a large run joins only its own files' entries."""

    def __init__(self, inputs: Optional[FrozenSet[str]] = None):
        self.bad = beam.metrics.Metrics.counter(BULK_NAMESPACE, "manifest_malformed_lines")
        self.inputs = inputs

    def process(self, line: str) -> Iterable[Tuple[str, str]]:
        if not line.strip():
            return
        try:
            path, sha = parse_manifest_line(line)
        except ValueError:
            self.bad.inc()
            return
        if self.inputs is None or input_of(path, self.inputs):
            yield path, sha


class ReadManifest(beam.PTransform):
    """(path, sha256) of everything captioned earlier with ``model_version`` under ``output``.

    The glob is matched at run time by the workers (``ReadAllFromText``), an empty match gives an
    empty PCollection, and large manifests are split like any text input. ``files``: read exactly
    these manifest files instead of the glob (``pipelines.bulk_parts`` picks the ones that can hold
    a part's inputs); ``inputs``: keep only the entries of these input files (see :func:`input_of`)."""

    def __init__(self, output: str, model_version: str, files: Optional[Sequence[str]] = None,
                 inputs: Optional[Iterable[str]] = None):
        super().__init__()
        self.patterns = [manifest_glob(output, model_version)] if files is None else list(files)
        self.inputs = None if inputs is None else frozenset(inputs)

    def expand(self, pbegin):
        return (pbegin
                | "ManifestGlob" >> beam.Create(self.patterns)
                | "ReadManifestFiles" >> beam.io.ReadAllFromText()
                | "ParseManifest" >> beam.ParDo(_ParseManifest(self.inputs)))


def _split_group(element, skipped_tag: str, rebuild=None):
    """One path's group: ``new`` (this run's images at that path) and ``seen`` (SHA-256s already
    captioned at that path). Same bytes → skipped; new or changed bytes → to caption. Each item goes
    on as it came, or as ``rebuild(path, sha256, item)``."""
    path, grouped = element
    seen = set(grouped["seen"])
    for sha, item in grouped["new"]:
        out = item if rebuild is None else rebuild(path, sha, item)
        if sha in seen:
            yield beam.pvalue.TaggedOutput(skipped_tag, out)
        else:
            yield out


class SplitAlreadyCaptioned(beam.PTransform):
    """Anti-join of ``(path, (sha256, item))`` against ``(path, sha256)`` manifest keys (bulk's are
    :func:`pipelines.image_keys.join_entry`: strings only, no image bytes go through the shuffle;
    ``rebuild(path, sha256, item)``, when given, makes what comes out of the items).

    Returns a ``DoOutputsTuple``: ``.todo`` = items to caption, ``["skipped"]`` = items
    whose (path, sha256) the manifest already has. A CoGroupByKey keyed by path: each key holds one
    path's entries (a handful), so the join is bounded per key however large the archive and the
    manifest are; it also serves as the fusion break before inference."""

    SKIPPED = "skipped"

    def __init__(self, seen, rebuild=None):
        super().__init__()
        self.seen = seen
        self.rebuild = rebuild

    def expand(self, keyed_items):
        return ({"new": keyed_items, "seen": self.seen}
                | "CoGroupByPath" >> beam.CoGroupByKey()
                | "SplitSeen" >> beam.FlatMap(_split_group, self.SKIPPED, self.rebuild).with_outputs(self.SKIPPED, main="todo"))


# ----------------------------------------------------------------------------- dead letters already filed
def dead_letter_key(letter) -> Tuple[str, str]:
    """What makes two dead letters the same failure: the input's path, the error class and the stage
    (the message may differ in detail between runs)."""
    return letter.path, f"{letter.error}|{letter.stage}"


class _ParseFiledDeadLetter(beam.DoFn):
    """A malformed line is dropped (its failure is filed again, which is the safe direction)."""

    def process(self, line: str) -> Iterable[Tuple[str, str]]:
        from captionbeam.pipelines.deadletter import DeadLetter
        if not line.strip():
            return
        try:
            yield dead_letter_key(DeadLetter.from_json(line))
        except (ValueError, KeyError, TypeError):
            return


class ReadFiledDeadLetters(beam.PTransform):
    """(path, error|stage) of every dead letter earlier runs filed under a bulk ``output`` (any model
    version: a file that cannot be read or decoded fails the same way for every model)."""

    def __init__(self, output: str):
        super().__init__()
        from captionbeam.pipelines.deadletter import DEAD_LETTERS_PREFIX, DEAD_LETTERS_SUFFIX, dead_letters_dir
        self.pattern = pio.join(dead_letters_dir(output), f"{DEAD_LETTERS_PREFIX}-*{DEAD_LETTERS_SUFFIX}")

    def expand(self, pbegin):
        return (pbegin
                | "DeadLettersGlob" >> beam.Create([self.pattern])
                | "ReadDeadLetterFiles" >> beam.io.ReadAllFromText()
                | "ParseDeadLetters" >> beam.ParDo(_ParseFiledDeadLetter()))


def _new_failures(element, counter_name: str):
    _key, grouped = element
    letters = list(grouped["new"])
    if grouped["filed"]:
        beam.metrics.Metrics.counter(BULK_NAMESPACE, counter_name).inc(len(letters))
        return
    yield from letters


class DropFiledDeadLetters(beam.PTransform):
    """Dead letters -> those not already filed by an earlier run under the output (keyed by
    :func:`dead_letter_key`, a CoGroupByKey like :class:`SplitAlreadyCaptioned`). The dropped ones are
    counted in ``already_filed``: they still count as ``failed`` in this run's accounting."""

    COUNTER = "already_filed"

    def __init__(self, filed):
        super().__init__()
        self.filed = filed

    def expand(self, letters):
        keyed = letters | "KeyByFailure" >> beam.Map(lambda d: (dead_letter_key(d), d))
        filed = self.filed | "KeyFiled" >> beam.Map(lambda k: (k, True))
        return ({"new": keyed, "filed": filed}
                | "CoGroupByFailure" >> beam.CoGroupByKey()
                | "KeepNewFailures" >> beam.FlatMap(_new_failures, self.COUNTER))

