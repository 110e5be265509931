"""Image shards: read tar (WebDataset layout) and TFRecord shards of images as a stream.

Three parts:

* pure, streaming readers over a binary file object (:func:`iter_tar`, :func:`iter_tfrecord`) that
  yield :class:`ShardRecord` (one image, with its caption / metadata if the shard carries them) or
  :class:`ShardError` (something that could not be read: a truncated archive, a bad CRC, a member
  that is not an image). They never hold more than one tar member group / one TFRecord record;
* :class:`ShardWriter` (used by ``captionbeam pack``, :mod:`pipelines.pack`): streams samples into a
  WebDataset tar or a TFRecord file, CRCs framed as TensorFlow does;
* :class:`ReadImageShards`, a composite ``PTransform``: shard globs -> ``ImageBlob``s + dead letters,
  one shard per work item (matched with ``fileio.MatchAll``, spread over workers by a ``Distinct``
  shuffle), read through Beam's ``FileSystems`` so ``gs://`` (and the tests' emulator) work.

Sources are named ``<shard path>#<member>``: the tar member name, or the TFRecord id field
(``#record-<n>`` where a record has no readable id). Duplicate image ids across (or within) shards
are resolved deterministically: the copy whose source sorts first is kept, every other copy is
dead-lettered (``error="duplicate_id"``, ``stage="shard"``, the message names the kept copy) and
counted (``captionbeam/shard_duplicate_ids``). So the features records hold each id once, and
"encoded + dead letters = images in the shards" still holds. ``duplicates="keep"`` skips the check.
"""
from __future__ import annotations

import gzip
import io as _io
import json
import logging
import posixpath
import struct
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam.io import fileio

import pipelines.io  # noqa: F401  (anonymous gs:// on the emulator, in workers too)
from pipelines.deadletter import DeadLetter

LOG = logging.getLogger(__name__)

FORMATS = ("files", "tar", "tfrecord")
INPUT_FORMATS = FORMATS + ("auto",)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
TEXT_EXTENSIONS = (".txt",)
META_EXTENSIONS = (".json",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecord.gz", ".tfrecords", ".tfrecords.gz", ".tfr", ".tfr.gz")
STAGE = "shard"  # dead-letter stage of everything this module reports

# Dead-letter error codes
TRUNCATED = "truncated_shard"
BAD_CRC = "bad_crc"
UNREADABLE = "unreadable_shard"
NOT_AN_IMAGE = "not_an_image"
MISSING_IMAGE = "missing_image"
MISSING_ID = "missing_id"
BAD_RECORD = "bad_record"
DUPLICATE_ID = "duplicate_id"
UNKNOWN_FORMAT = "unknown_format"
DUPLICATE_POLICIES = ("drop", "keep")
# What a corrupt archive / compressed stream raises (dead-lettered). Anything else -- a storage or
# network error -- propagates, so the runner retries the shard instead of dead-lettering good data.
CORRUPT_STREAM_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


# ----------------------------------------------------------------------------- formats
def detect_format(path: str) -> str:
    """``tar`` / ``tfrecord`` from the file name, ``files`` otherwise (a loose image)."""
    name = path.lower()
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if name.endswith(TFRECORD_SUFFIXES):
        return "tfrecord"
    return "files"


def resolve_format(path: str, input_format: str = "auto") -> str:
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"--input-format must be one of {', '.join(INPUT_FORMATS)}, got {input_format!r}")
    return detect_format(path) if input_format == "auto" else input_format


def is_gzip_name(path: str) -> bool:
    return path.lower().endswith((".gz", ".tgz"))


@dataclass(frozen=True)
class TfrecordFields:
    """Feature names of image TFRecords (im2txt layout by default); the first present one wins."""
    image: Tuple[str, ...] = ("image/encoded", "image/data")
    image_id: Tuple[str, ...] = ("image/id", "image/filename", "image/image_id", "image/source_id", "image/key")
    caption: Tuple[str, ...] = ("image/caption",)

    @classmethod
    def from_flags(cls, image: str = "", image_id: str = "", caption: str = "") -> "TfrecordFields":
        split = lambda s, d: tuple(x.strip() for x in s.split(",") if x.strip()) or d  # noqa: E731
        return cls(split(image, cls.image), split(image_id, cls.image_id), split(caption, cls.caption))


# ----------------------------------------------------------------------------- results
@dataclass
class ShardRecord:
    """One image read from a shard."""
    shard: str
    member: str
    image_id: str
    data: bytes
    captions: List[str] = field(default_factory=list)
    metadata: Optional[dict] = None

    @property
    def source(self) -> str:
        return f"{self.shard}#{self.member}"


@dataclass
class ShardError:
    """Something in a shard that could not be read; ``member`` may be a range ("rest of shard")."""
    shard: str
    member: str
    error: str
    message: str

    @property
    def source(self) -> str:
        return f"{self.shard}#{self.member}"


ShardItem = Union[ShardRecord, ShardError]


def image_id_for_member(name: str) -> str:
    """Image id of a tar member: its basename without the image extension, like a loose file's
    (``dir/1000268201_693b08cb0e.jpg`` -> ``1000268201_693b08cb0e``; ``x.2019.jpg`` -> ``x.2019``)."""
    return pipelines.io.image_id_from_path(name)


def _key_and_ext(name: str) -> Tuple[str, str]:
    """WebDataset grouping: key = path up to the first dot of the basename, ext = the rest (lowercased)."""
    d, base = posixpath.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return posixpath.join(d, stem), "." + ext.lower()


# ----------------------------------------------------------------------------- tar
def _member_kind(ext: str) -> str:
    """A member's kind from its last suffix (``.seg.png`` is an image, ``.cls.txt`` a text)."""
    last = "." + ext.rsplit(".", 1)[-1] if ext else ""
    if last in IMAGE_EXTENSIONS:
        return "image"
    if last in TEXT_EXTENSIONS:
        return "text"
    if last in META_EXTENSIONS:
        return "meta"
    return "other"


def _stem(name: str) -> str:
    """Member name without its last suffix: ``dir/x.2019.jpg`` -> ``dir/x.2019``."""
    return name.rsplit(".", 1)[0] if "." in posixpath.basename(name) else name


def _group_items(shard: str, key: str, members: Dict[str, Tuple[str, bytes]]) -> Iterator[ShardItem]:
    """One WebDataset sample (members sharing a key) -> a record per image member, or errors.

    Every image member is its own image (id: its basename without the image extension, as for a
    loose file), so nothing in the shard goes unaccounted. Captions come from ``<stem>.txt`` (the
    image's own stem) or else the sample's ``<key>.txt``, one caption per line; metadata likewise from
    ``.json`` (whose ``captions`` / ``caption`` are used when there is no text member)."""
    texts: Dict[str, List[str]] = {}
    metas: Dict[str, object] = {}
    images = []
    for ext, (name, data) in sorted(members.items()):
        kind = _member_kind(ext)
        if kind == "image":
            images.append((name, data))
        elif kind == "text":
            text = data.decode("utf-8", errors="replace")
            texts[_stem(name)] = [line.strip() for line in text.splitlines() if line.strip()]
        elif kind == "meta":
            try:
                metas[_stem(name)] = json.loads(data.decode("utf-8"))
            except ValueError as e:
                yield ShardError(shard, name, BAD_RECORD, f"metadata member is not JSON: {e}")
        else:
            yield ShardError(shard, name, NOT_AN_IMAGE,
                             f"member extension {ext or '(none)'!r} is not an image "
                             f"({', '.join(IMAGE_EXTENSIONS)}) nor a caption / metadata member (.txt, .json)")
    if not images:
        present = sorted(n for n, _ in members.values() if _member_kind(_key_and_ext(n)[1]) in ("text", "meta"))
        if present:
            yield ShardError(shard, present[0], MISSING_IMAGE,
                             f"sample {key!r} has {', '.join(present)} but no image member")
        return
    for name, data in images:
        stem = _stem(name)
        captions = texts.get(stem, texts.get(key))
        metadata = metas.get(stem, metas.get(key))
        if captions is None and isinstance(metadata, dict):
            caps = metadata.get("captions") or metadata.get("caption") or []
            captions = [caps] if isinstance(caps, str) else [str(c) for c in caps]
        yield ShardRecord(shard, name, image_id_for_member(name), data, list(captions or []),
                          metadata if isinstance(metadata, dict) else None)


def iter_tar(fileobj: BinaryIO, shard: str) -> Iterator[ShardItem]:
    """Stream a WebDataset-layout tar (plain or gzip, detected from the bytes) member by member.

    Members sharing a key (``dir/key.jpg``, ``dir/key.txt``, ``dir/key.json``; the key is the path
    up to the first dot of the basename, as in WebDataset) are consecutive in WebDataset tars and are
    grouped as they arrive (a key split over non-consecutive runs only loses the caption pairing); only the current group is held in memory. A
    truncated or corrupt archive yields the samples read so far, then one :class:`ShardError` for the
    unreadable rest (naming the member being read when it broke)."""
    key: Optional[str] = None
    group: Dict[str, Tuple[str, bytes]] = {}
    last_ok, reading = None, None
    count = 0
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                reading = info.name
                k, ext = _key_and_ext(info.name)
                if key is not None and k != key:
                    yield from _group_items(shard, key, group)
                    group = {}
                key = k
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
                if len(data) != info.size:
                    raise EOFError(f"member {info.name!r} has {len(data)} of {info.size} bytes")
                reading, last_ok = None, info.name
                if ext in group:
                    yield ShardError(shard, info.name, BAD_RECORD, f"duplicate member name in sample {key!r}")
                    continue
                group[ext] = (info.name, data)
                count += 1
    except CORRUPT_STREAM_ERRORS as e:  # storage errors are not caught: Beam retries the shard
        if group:  # only fully read members are in the group
            yield from _group_items(shard, key, group)
        err = TRUNCATED if isinstance(e, EOFError) or "unexpected end" in str(e).lower() else UNREADABLE
        where = (f"while reading member {reading!r}" if reading else
                 f"after member {last_ok!r}" if last_ok else "at its start")
        yield ShardError(shard, f"{reading or last_ok or ''}..", err,
                         f"archive unreadable {where} ({count} members read before): {type(e).__name__}: {e}")
        return
    if group:
        yield from _group_items(shard, key, group)




# ----------------------------------------------------------------------------- TFRecord
def _crc32c(data: bytes) -> int:
    import google_crc32c
    return google_crc32c.value(data)


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of ``data``."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One TFRecord frame: length, masked CRC of the length, data, masked CRC of the data."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


class TfrecordCorrupt(Exception):
    """The framing of a TFRecord file is broken: the rest of the file cannot be read."""


def _read_exact(f: BinaryIO, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = f.read(n)
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def iter_tfrecord_frames(fileobj: BinaryIO, verify: bool = True) -> Iterator[Tuple[int, int, Optional[bytes], str]]:
    """Stream TFRecord frames: ``(index, offset, data, problem)``.

    ``data`` is None with ``problem`` set when a record's data CRC fails (the framing is intact, so
    reading goes on). A bad length CRC or a truncated frame raises :class:`TfrecordCorrupt`: without a
    trustworthy length the rest of the file cannot be framed."""
    index, offset = 0, 0
    while True:
        header = _read_exact(fileobj, 12)
        if not header:
            return
        if len(header) < 12:
            raise TfrecordCorrupt(f"truncated record header at byte {offset} (record {index})")
        length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
        if verify and masked_crc32c(length_bytes) != length_crc:
            raise TfrecordCorrupt(f"bad length CRC at byte {offset} (record {index})")
        (length,) = struct.unpack("<Q", length_bytes)
        body = _read_exact(fileobj, length + 4)
        if len(body) < length + 4:
            raise TfrecordCorrupt(f"truncated record at byte {offset} (record {index}: {len(body)} of "
                                  f"{length + 4} bytes)")
        data, data_crc = body[:length], struct.unpack("<I", body[length:])[0]
        if verify and masked_crc32c(data) != data_crc:
            yield index, offset, None, f"bad data CRC at byte {offset} (record {index})"
        else:
            yield index, offset, data, ""
        offset += 12 + length + 4
        index += 1


def _example_class():
    # TensorFlow's own protobuf. (Not the ``tfrecord`` package's copy: it registers the same
    # ``tensorflow.BytesList`` symbols, and TensorFlow then fails to import in that process.)
    from tensorflow.core.example import example_pb2
    return example_pb2.Example


def _first_bytes(feature_map, names: Sequence[str]) -> Tuple[Optional[str], List[bytes]]:
    for name in names:
        if name in feature_map:
            f = feature_map[name]
            if f.HasField("bytes_list") and f.bytes_list.value:
                return name, list(f.bytes_list.value)
            if f.HasField("int64_list") and f.int64_list.value:
                return name, [str(v).encode() for v in f.int64_list.value]
    return None, []


def parse_image_example(serialized: bytes, fields: TfrecordFields) -> Tuple[Optional[str], Optional[bytes], List[str]]:
    """``(image_id, image bytes, captions)`` from a serialized ``tf.train.Example``; None where absent.

    A ``image/filename``-style id is reduced to its basename without extension (Flickr8k convention)."""
    ex = _example_class().FromString(serialized)
    fmap = ex.features.feature
    _, images = _first_bytes(fmap, fields.image)
    id_name, ids = _first_bytes(fmap, fields.image_id)
    _, caps = _first_bytes(fmap, fields.caption)
    image_id = None
    if ids:
        raw = ids[0].decode("utf-8", errors="replace")
        image_id = pipelines.io.image_id_from_path(raw) if id_name and "filename" in id_name else raw
    return image_id, (images[0] if images else None), [c.decode("utf-8", errors="replace") for c in caps]


def iter_tfrecord(fileobj: BinaryIO, shard: str, fields: TfrecordFields = TfrecordFields()) -> Iterator[ShardItem]:
    """Stream image records out of a TFRecord shard, verifying every CRC.

    A record with a bad data CRC is dead-lettered alone; a broken frame (bad length CRC, truncation,
    a bad gzip stream) dead-letters the rest of the shard; everything before it is yielded."""
    next_index = 0
    try:
        for index, offset, data, problem in iter_tfrecord_frames(fileobj):
            next_index = index + 1
            if data is None:
                yield ShardError(shard, f"record-{index}", BAD_CRC, problem)
                continue
            try:
                image_id, image, captions = parse_image_example(data, fields)
            except Exception as e:  # noqa: BLE001 - protobuf DecodeError and friends
                yield ShardError(shard, f"record-{index}", BAD_RECORD, f"not a tf.train.Example: {e}")
                continue
            if image_id is None:
                yield ShardError(shard, f"record-{index}", MISSING_ID,
                                 f"record {index} has none of the id fields {', '.join(fields.image_id)}")
                continue
            if image is None:
                yield ShardError(shard, image_id, MISSING_IMAGE,
                                 f"record {index} has none of the image fields {', '.join(fields.image)}")
                continue
            yield ShardRecord(shard, image_id, image_id, image, captions)
    except TfrecordCorrupt as e:
        yield ShardError(shard, f"record-{next_index}..", BAD_CRC if "CRC" in str(e) else TRUNCATED,
                         f"rest of shard unreadable: {e}")
    except CORRUPT_STREAM_ERRORS as e:  # gzip stream broken (storage errors propagate: Beam retries)
        yield ShardError(shard, f"record-{next_index}..", TRUNCATED, f"rest of shard unreadable: {type(e).__name__}: {e}")


# ----------------------------------------------------------------------------- any shard
def open_shard(path: str) -> BinaryIO:
    """A streaming binary file object over a shard (local or gs://), compressed bytes as stored."""
    from apache_beam.io.filesystems import FileSystems
    return FileSystems.open(path, compression_type="uncompressed")


def iter_shard(path: str, fmt: str, fields: TfrecordFields = TfrecordFields(),
               fileobj: Optional[BinaryIO] = None) -> Iterator[ShardItem]:
    """Every item of one shard, streamed; ``fmt`` is ``tar`` or ``tfrecord``."""
    try:
        f = fileobj if fileobj is not None else open_shard(path)
    except Exception as e:  # noqa: BLE001
        yield ShardError(path, "", UNREADABLE, f"cannot open shard: {type(e).__name__}: {e}")
        return
    try:
        if fmt == "tar":
            yield from iter_tar(f, path)  # tarfile detects gzip itself ("r|*")
        elif fmt == "tfrecord":
            stream = gzip.GzipFile(fileobj=f, mode="rb") if is_gzip_name(path) else f
            yield from iter_tfrecord(stream, path, fields)
        else:
            yield ShardError(path, "", UNKNOWN_FORMAT, f"not a shard format: {fmt!r} (tar or tfrecord)")
    finally:
        if fileobj is None:
            f.close()


def read_shard_bytes(data: bytes, path: str, fmt: str, fields: TfrecordFields = TfrecordFields()) -> List[ShardItem]:
    """Convenience for tests and small shards already in memory."""
    return list(iter_shard(path, fmt, fields, fileobj=_io.BytesIO(data)))


# ----------------------------------------------------------------------------- writers (used by `pack`)
def image_example(image_id: str, data: bytes, filename: str = "", captions: Sequence[str] = (),
                  sha256: str = "", image_format: str = "") -> bytes:
    """Serialized im2txt-style ``tf.train.Example``: image/encoded, image/id, image/filename,
    image/format, image/sha256 and image/caption (one value per caption)."""
    example_cls = _example_class()
    ex = example_cls()
    fmap = ex.features.feature
    fmap["image/encoded"].bytes_list.value.append(data)
    fmap["image/id"].bytes_list.value.append(image_id.encode("utf-8"))
    if filename:
        fmap["image/filename"].bytes_list.value.append(filename.encode("utf-8"))
    if image_format:
        fmap["image/format"].bytes_list.value.append(image_format.encode("utf-8"))
    if sha256:
        fmap["image/sha256"].bytes_list.value.append(sha256.encode("utf-8"))
    if captions:
        fmap["image/caption"].bytes_list.value.extend(c.encode("utf-8") for c in captions)
    return ex.SerializeToString()


class ShardWriter:
    """Streams samples into one shard (``tar`` in WebDataset layout, or ``tfrecord``) on a binary
    file object; with ``compress`` the stream is gzip'd. Nothing but the current sample is held."""

    def __init__(self, fileobj: BinaryIO, fmt: str, compress: bool = False):
        if fmt not in ("tar", "tfrecord"):
            raise ValueError(f"shard format must be tar or tfrecord, got {fmt!r}")
        self.fmt = fmt
        self._raw = fileobj
        self._gz = None
        self._tar = None
        if fmt == "tar":
            self._tar = tarfile.open(fileobj=fileobj, mode="w|gz" if compress else "w|", format=tarfile.PAX_FORMAT)
        elif compress:
            self._gz = gzip.GzipFile(fileobj=fileobj, mode="wb", mtime=0)

    def _add_member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        self._tar.addfile(info, _io.BytesIO(data))

    def write(self, image_id: str, data: bytes, ext: str, captions: Sequence[str] = (),
              metadata: Optional[dict] = None) -> str:
        """Add one image; returns its member name (tar) or id (tfrecord)."""
        ext = ext.lower() if ext.startswith(".") else "." + ext.lower()
        if self.fmt == "tar":
            member = f"{image_id}{ext}"
            self._add_member(member, data)
            if captions:
                self._add_member(f"{image_id}.txt", ("\n".join(captions) + "\n").encode("utf-8"))
            if metadata:
                self._add_member(f"{image_id}.json", json.dumps(metadata, sort_keys=True).encode("utf-8"))
            return member
        md = metadata or {}
        record = image_example(image_id, data, filename=md.get("filename", ""), captions=captions,
                               sha256=md.get("sha256", ""), image_format=ext.lstrip("."))
        (self._gz or self._raw).write(frame_record(record))
        return image_id

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
        if self._gz is not None:
            self._gz.close()


# ----------------------------------------------------------------------------- Beam
NAMESPACE = "captionbeam"


def _dead_letter(err: ShardError) -> DeadLetter:
    return DeadLetter(path=err.source, error=err.error, message=err.message, stage=STAGE)


class ReadShardFn(beam.DoFn):
    """shard path -> ``ImageBlob`` (or :class:`ShardRecord` with ``with_captions``) per image, and dead
    letters for what cannot be read. Streams the shard: memory is bounded by one sample, not the shard."""
    DEAD = "dead_letters"

    def __init__(self, input_format: str = "auto", fields: TfrecordFields = TfrecordFields(),
                 with_captions: bool = False):
        resolve_format("", input_format)  # fail fast on a bad format
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
        from pipelines.sources import ImageBlob
        fmt = resolve_format(path, self.input_format)
        if fmt == "files":
            self.errors.inc()
            yield beam.pvalue.TaggedOutput(self.DEAD, _dead_letter(ShardError(
                path, "", UNKNOWN_FORMAT, "file name is not a tar / TFRecord shard "
                                          "(.tar, .tar.gz, .tgz, .tfrecord[.gz]); force one with --input-format")))
            return
        start, n, bad, size = time.time(), 0, 0, 0
        for item in iter_shard(path, fmt, self.fields):
            if isinstance(item, ShardError):
                bad += 1
                self.errors.inc()
                yield beam.pvalue.TaggedOutput(self.DEAD, _dead_letter(item))
                continue
            n += 1
            size += len(item.data)
            self.images.inc()
            self.nbytes.inc(len(item.data))
            yield item if self.with_captions else ImageBlob(item.source, item.image_id, item.data)
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
                 duplicates: str = "drop"):
        super().__init__()
        if duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, got {duplicates!r}")
        self.patterns = list(patterns)
        self.fn = ReadShardFn(input_format, fields or TfrecordFields(), with_captions)
        self.duplicates = duplicates

    def expand(self, pbegin):
        paths = (pbegin
                 | "Patterns" >> beam.Create(self.patterns)
                 | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
                 | "Path" >> beam.Map(lambda m: m.path)
                 | "SkipDirectories" >> beam.Filter(lambda p: not p.endswith("/"))
                 | "Dedupe" >> beam.Distinct())
        read = paths | "ReadShards" >> beam.ParDo(self.fn).with_outputs(ReadShardFn.DEAD, main="images")
        if self.duplicates == "keep":
            return {"images": read.images, "dead_letters": read[ReadShardFn.DEAD]}
        unique = read.images | "DropDuplicateIds" >> DropDuplicateIds()
        dead = (read[ReadShardFn.DEAD], unique["dead_letters"]) | "AllDeadLetters" >> beam.Flatten()
        return {"images": unique["images"], "dead_letters": dead}
