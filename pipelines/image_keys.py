"""Images as keys first, bytes later: what the bulk job joins against its manifest.

``ReadImageKeys(patterns, input_format)`` reads every matched image once, hashes it where it is read
and keeps only an :class:`ImageKey` (source, image id, SHA-256, and for a shard member the shard, its
format and the member name): no image bytes travel into a shuffle. Shard members are de-duplicated by
image id on those keys (:class:`pipelines.shards.transforms.DropDuplicateIds`, the same rule as
:class:`pipelines.sources.ReadImages`). Readers' dead letters come out as ``ReadImages``' do.

``ReadKeyedImages`` reads the bytes again for the keys still to be captioned only:

* a loose file through the one bounded reader (:func:`pipelines.user_files.read_user_file`);
* shard members grouped per shard, so a shard is read once more at most (and not at all when none of
  its members is left to do), streamed, keeping only the members asked for, and stopping as soon as
  the last of them was read.

A file or shard can change between the two reads. The bytes read again are what gets captioned, so
they are hashed again and that SHA-256 goes with them (into the row and the manifest); a key whose
bytes changed is counted (``captionbeam/images_changed_since_hashed``). An image that cannot be read
again (the file is gone or refused now, the member is no longer in its shard) is a dead letter
(stage ``read``): it was matched, so it still counts in ``failed``.
"""
from __future__ import annotations

import logging
from typing import Iterable, Iterator, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam

from captionbeam.pipelines.counters import NAMESPACE
from captionbeam.pipelines.deadletter import MAX_MESSAGE_CHARS, DeadLetter
from captionbeam.pipelines.formats import split_by_format
from captionbeam.pipelines.image_items import CHANGED_SINCE_HASHED, DEFAULT_MAX_BYTES, ImageBlob, ShardError, ShardRecord
from captionbeam.pipelines.io import sha256_hex
from captionbeam.pipelines.shards.image_examples import TfrecordFields
from captionbeam.pipelines.shards.read import iter_shard
from captionbeam.pipelines.shards.transforms import DropDuplicateIds, ReadImageShards
from captionbeam.pipelines.sources import ReadImageFiles
from captionbeam.pipelines.user_files import UserFileError, check_max_bytes, read_user_file

log = logging.getLogger(__name__)

DEAD = "dead_letters"
STAGE = "read"


class ImageKey(NamedTuple):
    """One matched image without its bytes: enough to join on and to read it again. (A NamedTuple, not a
    dataclass: Beam encodes it in about two thirds of the bytes, and the in-process runner holds every
    key of a shuffle at once.)"""
    source: str  # as ImageBlob.source: the file path, or "<shard>#<member>"
    image_id: str
    sha256: str  # of the bytes read when it was matched
    shard: str = ""  # the shard's path ("" for a loose file)
    fmt: str = ""  # the shard's format: "tar" or "tfrecord"
    member: str = ""  # the member name inside the shard

    @property
    def in_shard(self) -> bool:
        return bool(self.shard)


def join_entry(key: ImageKey) -> Tuple[str, Tuple[str, Tuple[str, str, str, str]]]:
    """``(path, (sha256, (image_id, shard, fmt, member)))``: a key as plain strings for the anti-join
    against the manifest (:class:`pipelines.manifest.SplitAlreadyCaptioned`), the least it can carry."""
    return key.source, (key.sha256, (key.image_id, key.shard, key.fmt, key.member))


def key_of_join(path: str, sha256: str, locator: Tuple[str, str, str, str]) -> ImageKey:
    """The :class:`ImageKey` back from what :func:`join_entry` made of it."""
    image_id, shard, fmt, member = locator
    return ImageKey(path, image_id, sha256, shard, fmt, member)


def key_of_blob(blob: ImageBlob) -> ImageKey:
    """A loose file's key (its bytes are dropped here, in the reader's bundle)."""
    return ImageKey(blob.source, blob.image_id, sha256_hex(blob.data))


def key_of_record(record: ShardRecord, fmt: str) -> ImageKey:
    """A shard member's key (its bytes, captions and metadata are dropped here)."""
    return ImageKey(record.source, record.image_id, sha256_hex(record.data), record.shard, fmt, record.member)


class ReadImageKeys(beam.PTransform):
    """Pipeline root -> ``{"keys": PCollection[ImageKey], "dead_letters": PCollection[DeadLetter]}``: the
    images :class:`pipelines.sources.ReadImages` would give, and the same dead letters, as keys."""

    def __init__(self, patterns: Sequence[str], input_format: str = "files", max_bytes: int = DEFAULT_MAX_BYTES,
                 shard_fields: Optional[TfrecordFields] = None):
        super().__init__()
        self.patterns = list(patterns)
        self.groups = split_by_format(self.patterns, input_format)
        self.max_bytes = check_max_bytes(max_bytes)
        self.shard_fields = shard_fields

    def expand(self, pbegin):
        keys, dead = [], []
        for fmt, patterns in sorted(self.groups.items()):
            if fmt == "files":
                read = pbegin | "ReadFiles" >> ReadImageFiles(patterns, self.max_bytes)
                keys.append(read["images"] | "HashFiles" >> beam.Map(key_of_blob))
                dead.append(read["dead_letters"])
                continue
            name = fmt.capitalize()
            read = pbegin | f"Read{name}Shards" >> ReadImageShards(
                patterns, fmt, fields=self.shard_fields, with_captions=True, duplicates="keep",
                max_bytes=self.max_bytes)
            hashed = read["images"] | f"Hash{name}Members" >> beam.Map(key_of_record, fmt)
            unique = hashed | f"DropDuplicate{name}Ids" >> DropDuplicateIds()
            keys.append(unique["images"])
            dead += [read["dead_letters"], unique["dead_letters"]]
        if len(keys) == 1 and len(dead) == 1:
            return {"keys": keys[0], "dead_letters": dead[0]}
        return {"keys": keys | "FlattenKeys" >> beam.Flatten(),
                "dead_letters": dead | "FlattenDeadLetters" >> beam.Flatten()}


class _Reread:
    """What both re-readers share: the ``changed`` counter and the re-hash."""

    def setup(self):
        self.changed = beam.metrics.Metrics.counter(NAMESPACE, "images_changed_since_hashed")

    def rehashed(self, key: ImageKey, data: bytes) -> Tuple[ImageBlob, str]:
        sha = sha256_hex(data)
        if sha != key.sha256:
            self.changed.inc()
            log.warning("%s changed after it was hashed: captioning the bytes read now (sha256 %s, was %s)",
                        key.source, sha, key.sha256)
        return ImageBlob(key.source, key.image_id, data), sha


class _RereadFileFn(_Reread, beam.DoFn):
    """ImageKey of a loose file -> ``(ImageBlob, sha256 of the bytes read now)``, or a dead letter."""

    def __init__(self, max_bytes: int):
        self.max_bytes = check_max_bytes(max_bytes)

    def process(self, key: ImageKey):
        try:
            data = read_user_file(key.source, self.max_bytes)
        except UserFileError as e:
            yield beam.pvalue.TaggedOutput(DEAD, DeadLetter(
                path=key.source, error=e.error, stage=STAGE,
                message=f"{e.message} (when read again to caption it: it changed after it was hashed)"))
            return
        except Exception as e:  # noqa: BLE001 - a storage error on the second read, as on the first
            yield beam.pvalue.TaggedOutput(DEAD, DeadLetter.from_exception(key.source, e, STAGE))
            return
        yield self.rehashed(key, data)


def _shard_of(key: ImageKey) -> Tuple[Tuple[str, str], ImageKey]:
    return (key.shard, key.fmt), key


class _RereadShardFn(_Reread, beam.DoFn):
    """``((shard, fmt), [ImageKey])`` -> ``(ImageBlob, sha256)`` of each of those members, the shard read
    once, streamed, up to the last member asked for; a dead letter for each one it no longer holds."""

    def __init__(self, fields: TfrecordFields, max_bytes: int):
        self.fields = fields
        self.max_bytes = check_max_bytes(max_bytes)

    def setup(self):
        super().setup()
        self.reread = beam.metrics.Metrics.counter(NAMESPACE, "shards_reread")

    def process(self, element: Tuple[Tuple[str, str], Iterable[ImageKey]]) -> Iterator:
        (shard, fmt), keys = element
        wanted = {k.member: k for k in keys}
        self.reread.inc()
        last_error: Optional[ShardError] = None
        items = iter_shard(shard, fmt, self.fields, max_bytes=self.max_bytes)
        try:
            for item in items:
                if isinstance(item, ShardError):
                    last_error = item
                    continue
                key = wanted.pop(item.member, None)
                if key is not None:
                    yield self.rehashed(key, item.data)
                    if not wanted:
                        break  # the rest of the shard is not needed
        finally:
            items.close()
        for member, key in sorted(wanted.items()):
            why = f"; reading it reported {last_error.error}: {last_error.message}" if last_error else ""
            yield beam.pvalue.TaggedOutput(DEAD, DeadLetter(
                path=key.source, error=CHANGED_SINCE_HASHED, stage=STAGE,
                message=f"member {member!r} is no longer in {shard} when read again to caption it "
                        f"(the shard changed after it was hashed){why}"[:MAX_MESSAGE_CHARS]))


class ReadKeyedImages(beam.PTransform):
    """``ImageKey``s to caption -> ``{"images": (ImageBlob, sha256), "dead_letters": DeadLetter}``: the
    bytes read again (loose files one by one; shard members one pass per shard) and hashed again."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, shard_fields: Optional[TfrecordFields] = None):
        super().__init__()
        self.max_bytes = check_max_bytes(max_bytes)
        self.fields = shard_fields or TfrecordFields()

    def expand(self, keys):
        files, members = keys | "FilesOrMembers" >> beam.Partition(lambda k, _n: int(k.in_shard), 2)
        files = files | "RereadFiles" >> beam.ParDo(_RereadFileFn(self.max_bytes)).with_outputs(DEAD, main="images")
        shards = (members
                  | "KeyByShard" >> beam.Map(_shard_of)
                  | "GroupByShard" >> beam.GroupByKey()
                  | "RereadShards" >> beam.ParDo(_RereadShardFn(self.fields, self.max_bytes)).with_outputs(
                      DEAD, main="images"))
        return {"images": (files.images, shards.images) | "FlattenImages" >> beam.Flatten(),
                "dead_letters": (files[DEAD], shards[DEAD]) | "FlattenDeadLetters" >> beam.Flatten()}
