"""The Beam side of image shards: :class:`ReadImageShards`, a composite ``PTransform``: shard globs ->
``ImageBlob``s (or :class:`ShardRecord`s with captions) + dead letters, one shard per work item (matched
with ``fileio.MatchAll``, spread over workers by a ``Distinct`` shuffle), read as a stream through
Beam's ``FileSystems`` so ``gs://`` (and the tests' emulator) work.

Sources are named ``<shard path>#<member>``: the tar member name, or the TFRecord id field
(``#record-<n>`` where a record has no readable id). Duplicate image ids across (or within) shards
are resolved deterministically: the copy whose source sorts first is kept, every other copy is
dead-lettered (``error="duplicate_id"``, ``stage="shard"``, the message names the kept copy) and
counted (``captionbeam/shard_duplicate_ids``). So the features records hold each id once, and
"encoded + dead letters = images in the shards" still holds. ``duplicates="keep"`` skips the check.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator, Optional, Sequence

import apache_beam as beam

from captionbeam.pipelines.counters import NAMESPACE
from captionbeam.pipelines.deadletter import DeadLetter
from captionbeam.pipelines.formats import TAR_SUFFIXES, TFRECORD_SUFFIXES, resolve_format
from captionbeam.pipelines.image_items import DEFAULT_MAX_BYTES, DUPLICATE_ID, STAGE, UNKNOWN_FORMAT, ShardError
from captionbeam.pipelines.matching import MatchPaths
from captionbeam.pipelines.shards.image_examples import TfrecordFields
from captionbeam.pipelines.shards.read import iter_shard
from captionbeam.pipelines.user_files import file_problem

LOG = logging.getLogger(__name__)
DUPLICATE_POLICIES = ("drop", "keep")


def _dead_letter(err: ShardError) -> DeadLetter:
    return DeadLetter(path=err.source, error=err.error, message=err.message, stage=STAGE)


class ReadShardFn(beam.DoFn):
    """shard path -> ``ImageBlob`` (or :class:`ShardRecord` with ``with_captions``) per image, and dead
    letters for what cannot be read. Streams the shard: memory is bounded by one sample, not the shard."""
    DEAD = "dead_letters"

    def __init__(self, input_format: str = "auto", fields: TfrecordFields = TfrecordFields(),
                 with_captions: bool = False, max_bytes: int = DEFAULT_MAX_BYTES):
        resolve_format("", input_format)  # fail fast on a bad format
        if max_bytes < 1:
            raise ValueError(f"--max-bytes must be a positive number of bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.input_format = input_format
        self.fields = fields
        self.with_captions = with_captions

    def setup(self):
        m = beam.metrics.Metrics
        self.shards = m.counter(NAMESPACE, "shards_read")
        self.images = m.counter(NAMESPACE, "shard_images")
        self.errors = m.counter(NAMESPACE, "shard_errors")
        self.nbytes = m.counter(NAMESPACE, "shard_image_bytes")

    def process(self, path: str):
        problem = file_problem(path)              # a FIFO / device / dangling link is never opened
        if problem:
            self.errors.inc()
            yield beam.pvalue.TaggedOutput(self.DEAD, _dead_letter(ShardError(path, "", *problem)))
            return
        fmt = resolve_format(path, self.input_format)
        if fmt == "files":
            self.errors.inc()
            yield beam.pvalue.TaggedOutput(self.DEAD, _dead_letter(ShardError(
                path, "", UNKNOWN_FORMAT, "file name is not a tar / TFRecord shard "
                                          f"({', '.join(TAR_SUFFIXES + TFRECORD_SUFFIXES)}); force one with --input-format")))
            return
        start, n, bad, size = time.time(), 0, 0, 0
        for item in iter_shard(path, fmt, self.fields, max_bytes=self.max_bytes):
            if isinstance(item, ShardError):
                bad += 1
                self.errors.inc()
                yield beam.pvalue.TaggedOutput(self.DEAD, _dead_letter(item))
                continue
            n += 1
            size += len(item.data)
            self.images.inc()
            self.nbytes.inc(len(item.data))
            yield item if self.with_captions else item.to_blob()
        self.shards.inc()
        secs = max(time.time() - start, 1e-6)
        LOG.info("shard %s: %d images, %d dead letters, %.1f MB in %.1fs (%.0f images/s)",
                 path, n, bad, size / 1e6, secs, n / secs)


def keep_first_copy(item) -> Iterator:
    """(image_id, [images]) -> the copy whose source sorts first, and a dead letter per other copy."""
    image_id, copies = item
    copies = sorted(copies, key=lambda b: b.source)
    yield copies[0]
    for extra in copies[1:]:
        beam.metrics.Metrics.counter(NAMESPACE, "shard_duplicate_ids").inc()
        shard, _, member = extra.source.partition("#")
        yield beam.pvalue.TaggedOutput(ReadShardFn.DEAD, _dead_letter(ShardError(
            shard, member, DUPLICATE_ID,
            f"image id {image_id!r} is also in {copies[0].source} ({len(copies)} copies); "
            f"kept the copy whose source sorts first")))


class DropDuplicateIds(beam.PTransform):
    """Images -> ``{"images": one image per id, "dead_letters": a row per dropped copy}``.

    Deterministic (the copy whose ``source`` sorts first wins, whatever the read order), so every id
    reaches the features records once and every dropped copy is accounted for. A ``GroupByKey`` by id:
    the image bytes are shuffled once."""

    def expand(self, images):
        out = (images
               | "ById" >> beam.Map(lambda b: (b.image_id, b))
               | "GroupById" >> beam.GroupByKey()
               | "KeepFirst" >> beam.FlatMap(keep_first_copy).with_outputs(ReadShardFn.DEAD, main="images"))
        return {"images": out.images, "dead_letters": out[ReadShardFn.DEAD]}


class ReadImageShards(beam.PTransform):
    """Shard globs -> ``{"images": PCollection[ImageBlob], "dead_letters": PCollection[DeadLetter]}``.

    ``input_format``: ``tar`` / ``tfrecord`` force the reader, ``auto`` decides per matched file from
    its name. Globs are matched on the workers (``fileio.MatchAll``); matched shard paths are
    de-duplicated (a shuffle), so each shard is one work item, read as a stream on some worker. With
    ``with_captions`` the images are :class:`ShardRecord` (captions and metadata from the shard).

    ``duplicates``: ``drop`` (default) keeps one copy per image id (the one whose source sorts first)
    and dead-letters the others (``duplicate_id``); ``keep`` passes every copy on unchecked (no
    shuffle of the image bytes: for archives known to be unique)."""

    def __init__(self, patterns: Sequence[str], input_format: str = "auto",
                 fields: Optional[TfrecordFields] = None, with_captions: bool = False,
                 duplicates: str = "drop", max_bytes: int = DEFAULT_MAX_BYTES):
        super().__init__()
        if duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, got {duplicates!r}")
        self.patterns = list(patterns)
        self.fn = ReadShardFn(input_format, fields or TfrecordFields(), with_captions, max_bytes)
        self.duplicates = duplicates

    def expand(self, pbegin):
        paths = pbegin | "MatchShards" >> MatchPaths(self.patterns)
        read = paths | "ReadShards" >> beam.ParDo(self.fn).with_outputs(ReadShardFn.DEAD, main="images")
        if self.duplicates == "keep":
            return {"images": read.images, "dead_letters": read[ReadShardFn.DEAD]}
        unique = read.images | "DropDuplicateIds" >> DropDuplicateIds()
        dead = (read[ReadShardFn.DEAD], unique["dead_letters"]) | "AllDeadLetters" >> beam.Flatten()
        return {"images": unique["images"], "dead_letters": dead}
