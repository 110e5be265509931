"""Where images come from: ``ReadImages(patterns, input_format)`` turns globs into a PCollection of
:class:`ImageBlob` (raw file bytes, not decoded) plus dead letters for files that could not be read.

``input_format``:
  ``files``     loose image files; globs are matched and read with Beam's file I/O (``fileio.MatchAll``,
                then one read per file in a DoFn), so both run distributed on the workers.
  ``tar``       tar archives of images (``pipelines.shards.transforms.ReadImageShards``).
  ``tfrecord``  TFRecord shards of images (``pipelines.shards.transforms.ReadImageShards``).
  ``auto``      decided per pattern from its suffix by the one format table, :mod:`pipelines.formats`
                (``.tar``, ``.tar.gz``, ``.tgz`` -> tar; ``.tfrecord[s][.gz]``, ``.tfr[.gz]`` -> tfrecord;
                anything else -> files).

Contract for shard readers: ``ReadImageShards(patterns, input_format)`` is a PTransform applied to a
pipeline root that returns ``{"images": PCollection[ImageBlob], "dead_letters": PCollection[DeadLetter]}``,
with ``ImageBlob.source = "<shard path>#<member name>"``.
"""
from __future__ import annotations

import logging
from typing import Sequence

import apache_beam as beam

import captionbeam.pipelines.io as pio
from captionbeam.pipelines.counters import NAMESPACE
from captionbeam.pipelines.deadletter import DeadLetter
from captionbeam.pipelines.formats import INPUT_FORMATS, split_by_format  # noqa: F401  (INPUT_FORMATS: for the flags)
from captionbeam.pipelines.image_items import DEFAULT_MAX_BYTES, EMPTY_ID, ImageBlob
from captionbeam.pipelines.matching import MatchPaths
from captionbeam.pipelines.shards.transforms import ReadImageShards
from captionbeam.pipelines.user_files import UserFileError, check_max_bytes, read_user_file

log = logging.getLogger(__name__)


class _ReadFileFn(beam.DoFn):
    """path -> ImageBlob, or a dead letter (stage ``read``) when the file cannot be read."""
    DEAD = "dead_letters"

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        check_max_bytes(max_bytes)
        self.max_bytes = max_bytes

    def setup(self):
        self.read_ok = beam.metrics.Metrics.counter(NAMESPACE, "files_read")
        self.bytes_read = beam.metrics.Metrics.counter(NAMESPACE, "bytes_read")
        self.matched = beam.metrics.Metrics.counter(NAMESPACE, "files_matched")

    def process(self, path):
        self.matched.inc()
        try:
            data = read_user_file(path, self.max_bytes)    # never a FIFO, device, link to nowhere or > the limit
            if not pio.image_id_from_path(path):
                yield beam.pvalue.TaggedOutput(self.DEAD, DeadLetter(
                    path=path, error=EMPTY_ID, message="file name gives an empty image id", stage="read"))
                return
        except UserFileError as e:
            yield beam.pvalue.TaggedOutput(self.DEAD, DeadLetter(path=path, error=e.error, message=e.message,
                                                                 stage="read"))
            return
        except Exception as e:  # noqa: BLE001 - any storage error becomes a dead letter
            yield beam.pvalue.TaggedOutput(self.DEAD, DeadLetter.from_exception(path, e, "read"))
            return
        self.read_ok.inc()
        self.bytes_read.inc(len(data))
        yield ImageBlob(source=path, image_id=pio.image_id_from_path(path), data=data)


class ReadImageFiles(beam.PTransform):
    """Globs (local or gs://) -> ``{"images": ImageBlob..., "dead_letters": DeadLetter...}``.

    Globs are matched on the workers by :class:`pipelines.matching.MatchPaths` (paths matched by several
    globs are read once; directories skipped; the de-duplication shuffle spreads the reads over workers)."""

    def __init__(self, patterns: Sequence[str], max_bytes: int = DEFAULT_MAX_BYTES):
        super().__init__()
        self.patterns = list(patterns)
        self.max_bytes = check_max_bytes(max_bytes)

    def expand(self, pbegin):
        paths = pbegin | "MatchFiles" >> MatchPaths(self.patterns)
        read = paths | "Read" >> beam.ParDo(_ReadFileFn(self.max_bytes)).with_outputs(
            _ReadFileFn.DEAD, main="images")
        return {"images": read.images, "dead_letters": read[_ReadFileFn.DEAD]}


class ReadImages(beam.PTransform):
    """Images from globs in any supported ``input_format`` (see module doc), as
    ``{"images": PCollection[ImageBlob], "dead_letters": PCollection[DeadLetter]}``."""

    def __init__(self, patterns: Sequence[str], input_format: str = "files", max_bytes: int = DEFAULT_MAX_BYTES,
                 shard_fields=None):
        super().__init__()
        self.patterns = list(patterns)
        self.groups = split_by_format(self.patterns, input_format)
        self.max_bytes = check_max_bytes(max_bytes)
        self.shard_fields = shard_fields  # pipelines.shards.image_examples.TfrecordFields (None: defaults)

    def expand(self, pbegin):
        parts = []
        for fmt, patterns in sorted(self.groups.items()):
            if fmt == "files":
                parts.append(pbegin | "ReadFiles" >> ReadImageFiles(patterns, self.max_bytes))
            else:
                parts.append(pbegin | f"Read{fmt.capitalize()}Shards"
                             >> ReadImageShards(patterns, fmt, fields=self.shard_fields,
                                                max_bytes=self.max_bytes))
        if len(parts) == 1:
            return parts[0]
        return {
            "images": [p["images"] for p in parts] | "FlattenImages" >> beam.Flatten(),
            "dead_letters": [p["dead_letters"] for p in parts] | "FlattenDeadLetters" >> beam.Flatten(),
        }
