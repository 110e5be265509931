"""Image ``tf.train.Example``s in TFRecord shards (im2txt layout by default): which features hold the
image, its id and captions (:class:`TfrecordFields`), building one (:func:`image_example`, for ``pack``),
parsing one (:func:`parse_image_example`), and a shard's stream of items (:func:`iter_tfrecord`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator, List, Optional, Sequence, Tuple

from captionbeam.pipelines.image_items import (BAD_CRC, BAD_RECORD, CORRUPT_RECORD, CORRUPT_STREAM_ERRORS, DEFAULT_MAX_BYTES,
                                   MISSING_ID, MISSING_IMAGE, TOO_LARGE, TRUNCATED, ShardError, ShardItem,
                                   ShardRecord)
from captionbeam.pipelines.io import image_id_from_path
from captionbeam.pipelines.shards.tfrecord import RecordLengthPastEnd, TfrecordCorrupt, iter_tfrecord_frames


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
        image_id = image_id_from_path(raw) if id_name and "filename" in id_name else raw
    return image_id, (images[0] if images else None), [c.decode("utf-8", errors="replace") for c in caps]


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


def iter_tfrecord(fileobj: BinaryIO, shard: str, fields: TfrecordFields = TfrecordFields(),
                  max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[ShardItem]:
    """Stream image records out of a TFRecord shard, verifying every CRC.

    A record with a bad data CRC, or longer than ``max_bytes`` (``too_large``, skipped unread), is
    dead-lettered alone; a broken frame (bad length CRC, truncation, a bad gzip stream, a length past
    the end of the file: ``corrupt_record``) dead-letters the rest of the shard; everything before it
    is yielded."""
    next_index = 0
    try:
        for index, offset, data, problem in iter_tfrecord_frames(fileobj, max_bytes=max_bytes):
            next_index = index + 1
            if data is None:
                code = TOO_LARGE if problem.startswith("too_large") else BAD_CRC
                yield ShardError(shard, f"record-{index}", code, problem)
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
    except RecordLengthPastEnd as e:
        yield ShardError(shard, f"record-{next_index}..", CORRUPT_RECORD, f"rest of shard unreadable: {e}")
    except TfrecordCorrupt as e:
        yield ShardError(shard, f"record-{next_index}..", BAD_CRC if "CRC" in str(e) else TRUNCATED,
                         f"rest of shard unreadable: {e}")
    except CORRUPT_STREAM_ERRORS as e:  # gzip stream broken (storage errors propagate: Beam retries)
        yield ShardError(shard, f"record-{next_index}..", TRUNCATED, f"rest of shard unreadable: {type(e).__name__}: {e}")
