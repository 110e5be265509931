"""TFRecord layouts: one description per record kind, used both to build ``tf.train.Example``s
(pipelines) and to parse them (tf.data in the trainer, evaluation, tests).

Record kinds
------------
``features``  (``<out>/features-NNNNN-of-NNNNN.tfrecord``, written by ``captionbeam features``)
    image_id (bytes), path (bytes), sha256 (hex bytes), encoder (bytes),
    feature_shape (int64[]), feature (float32[], flattened row-major).
``examples``  (``<out>/<split>-NNNNN-of-NNNNN.tfrecord``, written by ``captionbeam captions --features``)
    image_id, feature_shape, feature, plus every caption of the image as token ids:
    caption_ids (int64[], all captions concatenated) and caption_lengths (int64[], one per caption).
``captions``  (``<out>/<split>-captions-NNNNN-of-NNNNN.tfrecord``, ``captions`` without ``--features``)
    image_id, caption_ids, caption_lengths.

Each caption's ids include the start and end tokens.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from captionbeam.model import gfile
from captionbeam.model.encoder_description import BundledFile, EncoderDescription

FEATURES_PREFIX = "features"
FEATURES_SPEC_FILE = "features_spec.json"
RECORD_SUFFIX = ".tfrecord"


# ----------------------------------------------------------------------------- builders
def _bytes(values: Sequence[bytes]):
    import tensorflow as tf
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values) -> "tf.train.Feature":
    import tensorflow as tf
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _floats(values: np.ndarray):
    """A float feature parsed from its packed wire form (field 1, little-endian float32s): protobuf's
    ``FloatList(value=array)`` converts element by element (254 us for 1,024 floats; this: 3 us)."""
    import tensorflow as tf
    raw = np.ascontiguousarray(values, "<f4").tobytes()
    return tf.train.Feature(float_list=tf.train.FloatList.FromString(b"\x0a" + _varint(len(raw)) + raw))


def _b(s) -> bytes:
    return s if isinstance(s, bytes) else str(s).encode("utf-8")


def feature_example(image_id: str, path: str, sha256: str, encoder: str, feature: np.ndarray) -> bytes:
    """Serialized ``features`` record."""
    import tensorflow as tf
    feature = np.asarray(feature, np.float32)
    ex = tf.train.Example(features=tf.train.Features(feature={
        "image_id": _bytes([_b(image_id)]),
        "path": _bytes([_b(path)]),
        "sha256": _bytes([_b(sha256)]),
        "encoder": _bytes([_b(encoder)]),
        "feature_shape": _ints(feature.shape),
        "feature": _floats(feature),
    }))
    return ex.SerializeToString()


def _caption_features(captions: Sequence[Sequence[int]]) -> Dict[str, object]:
    flat = [int(t) for c in captions for t in c]
    return {"caption_ids": _ints(flat), "caption_lengths": _ints([len(c) for c in captions])}


def training_example(image_id: str, feature: np.ndarray, captions: Sequence[Sequence[int]]) -> bytes:
    """Serialized ``examples`` record: one image's features and all of its tokenised captions."""
    import tensorflow as tf
    feature = np.asarray(feature, np.float32)
    fmap = {
        "image_id": _bytes([_b(image_id)]),
        "feature_shape": _ints(feature.shape),
        "feature": _floats(feature),
    }
    fmap.update(_caption_features(captions))
    return tf.train.Example(features=tf.train.Features(feature=fmap)).SerializeToString()


def caption_example(image_id: str, captions: Sequence[Sequence[int]]) -> bytes:
    """Serialized ``captions`` record (no features)."""
    import tensorflow as tf
    fmap = {"image_id": _bytes([_b(image_id)])}
    fmap.update(_caption_features(captions))
    return tf.train.Example(features=tf.train.Features(feature=fmap)).SerializeToString()


# ----------------------------------------------------------------------------- parsers (pure Python)
@dataclass
class FeatureRow:
    """One ``features`` record, parsed (``record_file``: the features-*.tfrecord it came from, when known)."""
    image_id: str
    path: str                  # the source image
    sha256: str
    encoder: str
    feature: np.ndarray
    record_file: str = ""


def parse_feature_example(serialized: bytes, record_file: str = "") -> FeatureRow:
    """Parse a ``features`` record without tf.data: for pipelines and tests."""
    import tensorflow as tf
    ex = tf.train.Example.FromString(serialized)
    f = ex.features.feature
    shape = tuple(f["feature_shape"].int64_list.value)
    return FeatureRow(
        image_id=f["image_id"].bytes_list.value[0].decode("utf-8"),
        path=f["path"].bytes_list.value[0].decode("utf-8"),
        sha256=f["sha256"].bytes_list.value[0].decode("ascii"),
        encoder=f["encoder"].bytes_list.value[0].decode("utf-8"),
        feature=np.asarray(f["feature"].float_list.value, np.float32).reshape(shape),
        record_file=record_file)


def split_captions(caption_ids: Sequence[int], caption_lengths: Sequence[int]) -> List[List[int]]:
    out, pos = [], 0
    for n in caption_lengths:
        out.append([int(t) for t in caption_ids[pos:pos + n]])
        pos += n
    return out


# ----------------------------------------------------------------------------- tf.data parsing
def training_feature_spec(feature_shape: Sequence[int]):
    import tensorflow as tf
    size = int(np.prod(feature_shape))
    return {
        "image_id": tf.io.FixedLenFeature([], tf.string),
        "feature": tf.io.FixedLenFeature([size], tf.float32),
        "caption_ids": tf.io.VarLenFeature(tf.int64),
        "caption_lengths": tf.io.VarLenFeature(tf.int64),
    }


def parse_training_example(serialized, feature_shape: Sequence[int]):
    """tf.data map fn: -> dict(image_id, feature[feature_shape], captions: RaggedTensor[n_captions, None])."""
    import tensorflow as tf
    parsed = tf.io.parse_single_example(serialized, training_feature_spec(feature_shape))
    ids = tf.sparse.to_dense(parsed["caption_ids"])
    lengths = tf.sparse.to_dense(parsed["caption_lengths"])
    captions = tf.RaggedTensor.from_row_lengths(tf.cast(ids, tf.int32), lengths)
    feature = tf.reshape(parsed["feature"], list(feature_shape))
    return {"image_id": parsed["image_id"], "feature": feature, "captions": captions}


def parse_features_record(serialized, feature_shape: Sequence[int]):
    """tf.data map fn for ``features`` records (bulk evaluation on features alone)."""
    import tensorflow as tf
    size = int(np.prod(feature_shape))
    parsed = tf.io.parse_single_example(serialized, {
        "image_id": tf.io.FixedLenFeature([], tf.string),
        "path": tf.io.FixedLenFeature([], tf.string),
        "sha256": tf.io.FixedLenFeature([], tf.string),
        "feature": tf.io.FixedLenFeature([size], tf.float32),
    })
    parsed["feature"] = tf.reshape(parsed["feature"], list(feature_shape))
    return parsed


# ----------------------------------------------------------------------------- file naming
def shard_pattern(directory: str, prefix: str) -> str:
    return f"{directory.rstrip('/')}/{prefix}-*-of-*{RECORD_SUFFIX}"


def split_prefix(split: str) -> str:
    return split


def captions_prefix(split: str) -> str:
    return f"{split}-captions"


# ----------------------------------------------------------------------------- features spec
@dataclass
class FeaturesSpec:
    """``features_spec.json``: what produced a directory of feature records.

    ``encoder_spec`` is the one typed description of the encoder (read it with
    :meth:`encoder_description`, which also reads files written before it existed); ``encoder_file`` is set
    by ``captionbeam train`` when a model-file encoder is bundled into the model dir. The other fields
    are the features job's settings and counts. Older files kept these under an untyped ``extra``
    object: :meth:`from_json` still reads them."""
    encoder: str
    feature_shape: List[int]
    image_size: List[int]
    preprocessing: str
    weights: str = "imagenet"
    count: int = 0
    dead_letters: int = 0
    encoder_spec: Optional[EncoderDescription] = None
    encoder_file: Optional[BundledFile] = None
    compression: str = ""                     # NONE | GZIP (the records' compression; "": not recorded)
    resize_method: str = ""                   # the filter images were squashed with ("": bilinear)
    files_matched: int = 0
    duplicate_image_ids: List[str] = field(default_factory=list)   # ids of several records (first 100)
    duplicate_image_id_count: int = 0
    record_pattern: str = ""
    images: List[str] = field(default_factory=list)
    input_format: str = ""
    max_pixels: int = 0
    batch_size: int = 0

    def encoder_description(self) -> EncoderDescription:
        """The encoder these features came from: the recorded description, else (older files) one made
        from the top-level fields."""
        if self.encoder_spec is not None:
            return self.encoder_spec
        return EncoderDescription.from_spec_fields(self.encoder, self.weights, self.image_size, self.preprocessing,
                                                   self.feature_shape)

    def to_dict(self) -> Dict[str, object]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["encoder_spec"] = self.encoder_spec.to_dict() if self.encoder_spec else None
        d["encoder_file"] = asdict(self.encoder_file) if self.encoder_file else None
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, object]) -> "FeaturesSpec":
        old = d.get("extra") or {}           # files written before the typed fields
        merged = {**{k: v for k, v in old.items() if k in cls.__dataclass_fields__}, **d}
        known = {k: merged[k] for k in cls.__dataclass_fields__ if k in merged and merged[k] is not None}
        if "encoder_spec" in known:
            known["encoder_spec"] = EncoderDescription.from_dict(known["encoder_spec"])
        if "encoder_file" in known:
            known["encoder_file"] = BundledFile.from_dict(known["encoder_file"])
        return cls(**known)

    @classmethod
    def from_json(cls, text: str) -> "FeaturesSpec":
        return cls.from_dict(json.loads(text))

    def save(self, directory: str) -> None:
        gfile.write_text(gfile.join(directory, FEATURES_SPEC_FILE), self.to_json())

    @classmethod
    def load(cls, directory: str) -> "FeaturesSpec":
        path = gfile.join(directory, FEATURES_SPEC_FILE)
        return cls.from_json(gfile.read_text(
            path, missing=f"features spec not found: {path} (run `captionbeam features` first)"))
