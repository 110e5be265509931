"""Export a trained model directory as one SavedModel: encoded image bytes in, captions out.

The SavedModel holds the whole chain as TensorFlow ops, so ``tf.saved_model.load(path)`` is all a
server needs (no captionbeam, no Keras code, no Pillow)::

    m = tf.saved_model.load(path)
    out = m.signatures["serving_default"](images=tf.constant([jpeg_bytes, png_bytes]))
    out["captions"], out["log_probs"], out["valid"], out["tokens"]

``serving_default(images: string[N]) -> captions string[N], log_probs float32[N], tokens int32[N, T],
valid bool[N]``: each image is decoded (``tf.io.decode_image``: JPEG, PNG, GIF first frame, BMP; RGB),
squashed to the encoder's input with bilinear antialiased resizing (close to, not bit-equal with, the
Pillow resize of the features job; identical when the image already has the input size), rounded to
uint8 like Pillow's output, preprocessed with the encoder family's arithmetic
(``model.encoders.preprocess_tf``), encoded, and decoded (greedy or beam search, fixed at export).
The decision is per image: bytes that are not a JPEG/PNG/GIF/BMP, truncated or corrupt data, and an
image whose header declares more than ``max_pixels`` pixels (checked before decoding: a 445 KB PNG of
12000x12000 is refused from its IHDR, never inflated) get ``valid`` False, an empty caption and
log-prob 0, and the rest of the batch is captioned; an empty batch returns empty outputs. ``caption_features(features) -> the same outputs`` skips
the image part. EXIF orientation is not applied (Pillow does it in ``captionbeam caption``).
"""
from __future__ import annotations

import json
import os
from typing import Optional

import tensorflow as tf

from captionbeam.model import gfile
from captionbeam.model.decode import decode_graph, tokens_to_strings
from captionbeam.model.limits import DEFAULT_MAX_PIXELS

METADATA_FILE = "captionbeam_export.json"
SAVED_MODEL_FILE = "saved_model.pb"
# Bump when the serving graph changes what it computes (decode, resize, preprocessing, decoding): it is
# part of every export's version, so bulk's --skip-existing re-captions with a changed graph.
EXPORT_FORMAT = 3          # 2: per-image validity (a bad image no longer fails the batch), pixel limit;
                           # 3: JPEGs decoded as Pillow decodes them (accurate integer DCT)
SERVING_INPUT = "images"
SERVING_OUTPUTS = ("captions", "log_probs", "valid")


def _u32_be(data, offset):
    b = tf.cast(tf.io.decode_raw(tf.strings.substr(data, offset, 4), tf.uint8), tf.int64)
    return ((b[0] * 256 + b[1]) * 256 + b[2]) * 256 + b[3]


def _u16_le(data, offset):
    b = tf.cast(tf.io.decode_raw(tf.strings.substr(data, offset, 2), tf.uint8), tf.int64)
    return b[0] + b[1] * 256


def _i32_le_abs(data, offset):   # BMP heights are negative for top-down rows
    return tf.abs(tf.cast(tf.io.decode_raw(tf.strings.substr(data, offset, 4), tf.int32)[0], tf.int64))


def header_pixels(data):
    """Width x height an image's header declares, read before any pixel is decoded: JPEG's frame header
    (``tf.image.extract_jpeg_shape``), PNG's IHDR, GIF's logical screen, BMP's info header; -1 for
    bytes that are none of these by their magic number (or too short to hold the header)."""
    n = tf.strings.length(data)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        return shape[0] * shape[1]

    return tf.case([
        (tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff"), jpeg),
        (tf.logical_and(tf.equal(tf.strings.substr(data, 0, 4), b"\x89PNG"), n >= 24),
         lambda: _u32_be(data, 16) * _u32_be(data, 20)),
        (tf.logical_and(tf.equal(tf.strings.substr(data, 0, 4), b"GIF8"), n >= 10),
         lambda: _u16_le(data, 6) * _u16_le(data, 8)),
        (tf.logical_and(tf.equal(tf.strings.substr(data, 0, 2), b"BM"), n >= 26),
         lambda: _i32_le_abs(data, 18) * _i32_le_abs(data, 22))],
        default=lambda: tf.constant(-1, tf.int64))


class CaptionServer:
    """The serving functions over a Captioner's Keras encoder and caption model (exported through
    ``keras.export.ExportArchive``, which tracks Keras 3 variables for ``tf.saved_model``)."""

    def __init__(self, captioner, max_pixels: int = DEFAULT_MAX_PIXELS):
        if captioner.encoder_description.kind == "tflite":
            raise ValueError(f"the model's encoder {captioner.encoder_name!r} is a TFLite file, and a .tflite encoder "
                             f"cannot be part of a SavedModel (it runs in its own interpreter): caption and bulk "
                             f"take this model dir as it is (--model-dir), or train on features of the Keras model "
                             f"the .tflite file was converted from to export")
        if max_pixels < 1:
            raise ValueError(f"--max-pixels must be positive, got {max_pixels}")
        self.max_pixels = int(max_pixels)
        enc = captioner.encoder
        if not hasattr(enc, "model"):
            raise ValueError(f"export needs a Keras encoder; {captioner.encoder_name!r} is {type(enc).__name__}")
        mode = captioner.encoder_description.preprocessing_mode or "none"
        self.encoder_model = enc.model
        self.caption_model = captioner.model
        self.size = int(captioner.image_size[0])
        self.mode = mode
        self.beam_size, self.max_length, self.alpha = captioner.beam_size, captioner.max_length, captioner.alpha
        self.vocab_tokens = list(captioner.vocab.tokens)
        self.feature_shape = [int(d) for d in captioner.config.feature_shape]
        self.metadata = {"model_version": captioner.model_version, "encoder": captioner.encoder_name,
                         "arch": captioner.arch, "image_size": [self.size, self.size],
                         "preprocessing_mode": mode, "beam_size": self.beam_size, "max_length": self.max_length,
                         "length_penalty": self.alpha, "export_format": EXPORT_FORMAT,
                         "max_pixels": self.max_pixels}
        if len(captioner.members) > 1:   # an ensemble: one SavedModel holding every member (model.ensemble)
            self.metadata["members"] = list(captioner.members)
        self.image_signature = [tf.TensorSpec([None], tf.string, name="images")]
        self.features_signature = [tf.TensorSpec([None] + self.feature_shape, tf.float32, name="features")]

    def _decode_one(self, index, data):
        """One image -> (index, pixels); raises (in the graph) for bytes that are not an image, declare
        more than ``max_pixels`` pixels (checked from the header, nothing decoded) or are corrupt."""
        pixels = header_pixels(data)
        ok = tf.logical_and(pixels > 0, pixels <= self.max_pixels)
        with tf.control_dependencies([tf.debugging.Assert(ok, ["not an image or over max_pixels:", pixels])]):
            # JPEG with the accurate integer DCT: TensorFlow's default (fast) DCT differs from Pillow's decode,
            # which made the features job, bulk and evaluate, by up to 5 levels per pixel (17 of 100 Flickr8k
            # test captions differed from evaluate's, benchmarks/flickr8k_deploy.py); accurate: identical
            img = tf.cond(tf.io.is_jpeg(data),
                          lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
                          lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
        img = tf.image.resize(tf.cast(img, tf.float32), [self.size, self.size], method="bilinear", antialias=True)
        return index, tf.clip_by_value(tf.round(img), 0.0, 255.0)

    def _decode_batch(self, images):
        """Per image: a failure (not an image, pixel bomb, truncated or corrupt data) drops only that image
        (``tf.data``'s ``ignore_errors``: TensorFlow ops cannot catch, a dataset can). Returns the valid
        images' indices (ascending), their pixels, and the ``valid`` mask."""
        n = tf.shape(images)[0]
        size = self.size
        ds = tf.data.Dataset.from_tensor_slices((tf.range(n), images)).map(self._decode_one).ignore_errors()
        index, pixels = ds.reduce(
            (tf.zeros([0], tf.int32), tf.zeros([0, size, size, 3], tf.float32)),
            lambda acc, x: (tf.concat([acc[0], [x[0]]], 0), tf.concat([acc[1], [x[1]]], 0)))
        order = tf.argsort(index)
        index, pixels = tf.gather(index, order), tf.gather(pixels, order)
        valid = tf.scatter_nd(index[:, None], tf.ones_like(index, tf.bool), [n])
        return index, tf.ensure_shape(pixels, [None, size, size, 3]), valid

    def _caption_features(self, features):
        out = decode_graph(self.caption_model, features, self.beam_size, self.max_length, self.alpha)
        return {"captions": tokens_to_strings(out["tokens"], self.vocab_tokens), "log_probs": out["log_prob"],
                "tokens": out["tokens"], "lengths": out["length"]}

    def _serve(self, images):
        """Captions for the valid images only; an invalid one gets ``valid`` False, an empty caption,
        log-prob 0 and no tokens; an empty batch (or one without a valid image) returns empty outputs."""
        from captionbeam.model.encoders import preprocess_tf
        n = tf.shape(images)[0]
        index, pixels, valid = self._decode_batch(images)
        k = tf.shape(index)[0]

        def caption():
            features = self.encoder_model(preprocess_tf(pixels, self.mode), training=False)
            out = self._caption_features(tf.cast(features, tf.float32))
            return out["captions"], out["log_probs"], tf.cast(out["tokens"], tf.int32), tf.cast(out["lengths"], tf.int32)

        def nothing():
            return (tf.zeros([0], tf.string), tf.zeros([0], tf.float32), tf.zeros([0, 1], tf.int32),
                    tf.zeros([0], tf.int32))

        captions, log_probs, tokens, lengths = tf.cond(k > 0, caption, nothing)
        # row j of the batch takes result row (its rank among the valid images), or the padding row k
        rank = tf.cumsum(tf.cast(valid, tf.int32)) - 1
        take = tf.where(valid, rank, k)
        pad = lambda x, value: tf.concat([x, tf.fill(tf.concat([[1], tf.shape(x)[1:]], 0), value)], 0)  # noqa: E731
        return {"captions": tf.gather(pad(captions, ""), take), "log_probs": tf.gather(pad(log_probs, 0.0), take),
                "tokens": tf.gather(pad(tokens, 0), take), "lengths": tf.gather(pad(lengths, 0), take),
                "valid": valid}


def export(model_dir: str, output: str, beam_size: int = 1, max_length: Optional[int] = None,
           alpha: float = 0.0, which: str = "best", max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Write the SavedModel to ``output`` (plus ``output/captionbeam_export.json``); returns its metadata."""
    from captionbeam.model.captioner import Captioner
    captioner = Captioner.load(model_dir, beam_size=beam_size, max_length=max_length, alpha=alpha, which=which)
    server = CaptionServer(captioner, max_pixels)
    root = tf.Module(name="captionbeam")
    # The graphs capture the models' variables; the module tracks the underlying tf.Variables (not the Keras
    # models: Keras 3 would add a default signature that feeds float tokens to the caption model).
    root.encoder_variables = [getattr(v, "value", v) for v in server.encoder_model.variables]
    root.caption_variables = [getattr(v, "value", v) for v in server.caption_model.variables]
    root.serve = tf.function(server._serve, input_signature=server.image_signature)
    root.caption_features = tf.function(server._caption_features, input_signature=server.features_signature)
    tf.saved_model.save(root, output, signatures={"serving_default": root.serve,
                                                  "caption_features": root.caption_features})
    meta = dict(server.metadata, model_dir=model_dir, signatures={
        "serving_default": {"inputs": {"images": "string[N] encoded image bytes"},
                            "outputs": ["captions", "log_probs", "tokens", "lengths", "valid"]},
        "caption_features": {"inputs": {"features": f"float32[N, {', '.join(map(str, server.feature_shape))}]"},
                             "outputs": ["captions", "log_probs", "tokens", "lengths"]}})
    gfile.write_text(os.path.join(output, METADATA_FILE), json.dumps(meta, indent=2))
    return meta


# ----------------------------------------------------------------------------- reading an export back
def read_metadata(path: str) -> dict:
    """``captionbeam_export.json`` of an export; ValueError when it is missing or lacks the keys bulk needs."""
    meta_path = gfile.join(path, METADATA_FILE)
    meta = gfile.read_json(meta_path)
    if meta is None:
        raise ValueError(f"{path} is a SavedModel without {METADATA_FILE}: not written by captionbeam export")
    missing = [k for k in ("model_version", "encoder", "image_size", "beam_size", "max_length") if k not in meta]
    if missing:
        raise ValueError(f"{meta_path}: missing {', '.join(missing)}")
    return meta


def check_serving_signature(path: str) -> None:
    """ValueError unless ``serving_default`` takes ``images`` and returns captions, log_probs and valid
    (read from ``saved_model.pb`` without loading the graph)."""
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(f"{path.rstrip('/')}/{SAVED_MODEL_FILE}", "rb") as f:
        proto.ParseFromString(f.read())
    for graph in proto.meta_graphs:
        sig = graph.signature_def.get("serving_default")
        if sig is not None and SERVING_INPUT in sig.inputs and all(o in sig.outputs for o in SERVING_OUTPUTS):
            return
    raise ValueError(f"{path}: no serving_default({SERVING_INPUT}=...) signature returning "
                     f"{', '.join(SERVING_OUTPUTS)}")


def export_version(path: str) -> str:
    """Stable id of an export, the same for every re-export of one model with the same settings.

    A hash of ``captionbeam_export.json`` without its ``model_dir``: the source model's version (itself a
    hash of its weights, vocabulary and config), the encoder and decoding settings and ``export_format``
    (the serving graph's version). Not of the SavedModel's bytes: ``saved_model.pb`` (function names),
    the variables files and ``fingerprint.pb`` change from one save to the next although what they
    compute does not."""
    import hashlib
    meta = {k: v for k, v in read_metadata(path).items() if k != "model_dir"}
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
