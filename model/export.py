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
Bytes that are not a JPEG/PNG/GIF/BMP by their magic number get ``valid`` False and an empty
caption instead of failing the whole batch (a file with a valid header but corrupt data still fails
the request: TensorFlow ops cannot catch). ``caption_features(features) -> the same outputs`` skips
the image part. EXIF orientation is not applied (Pillow does it in ``captionbeam caption``).
"""
from __future__ import annotations

import json
import os
from typing import Optional

import tensorflow as tf

from captionbeam.model import gfile
from captionbeam.model.decode import decode_graph, tokens_to_strings

METADATA_FILE = "captionbeam_export.json"
SAVED_MODEL_FILE = "saved_model.pb"
# Bump when the serving graph changes what it computes (decode, resize, preprocessing, decoding): it is
# part of every export's version, so bulk's --skip-existing re-captions with a changed graph.
EXPORT_FORMAT = 1
SERVING_INPUT = "images"
SERVING_OUTPUTS = ("captions", "log_probs", "valid")


def _valid_image(data):
    """True for JPEG / PNG / GIF / BMP magic numbers."""
    head = tf.strings.substr(data, 0, 4)
    return tf.reduce_any(tf.stack([
        tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff"),
        tf.equal(head, b"\x89PNG"),
        tf.equal(head, b"GIF8"),
        tf.equal(tf.strings.substr(data, 0, 2), b"BM"),
    ]))


class CaptionServer:
    """The serving functions over a Captioner's Keras encoder and caption model (exported through
    ``keras.export.ExportArchive``, which tracks Keras 3 variables for ``tf.saved_model``)."""

    def __init__(self, captioner):
        if captioner.encoder_description.kind == "tflite":
            raise ValueError(f"the model's encoder {captioner.encoder_name!r} is a TFLite file, and a .tflite encoder "
                             f"cannot be part of a SavedModel (it runs in its own interpreter): caption and bulk "
                             f"take this model dir as it is (--model-dir), or train on features of the Keras model "
                             f"the .tflite file was converted from to export")
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
                         "length_penalty": self.alpha, "export_format": EXPORT_FORMAT}
        if len(captioner.members) > 1:   # an ensemble: one SavedModel holding every member (model.ensemble)
            self.metadata["members"] = list(captioner.members)
        self.image_signature = [tf.TensorSpec([None], tf.string, name="images")]
        self.features_signature = [tf.TensorSpec([None] + self.feature_shape, tf.float32, name="features")]

    def _decode_one(self, data):
        ok = _valid_image(data)

        def decode():
            img = tf.io.decode_image(data, channels=3, expand_animations=False)
            img = tf.image.resize(tf.cast(img, tf.float32), [self.size, self.size], method="bilinear",
                                  antialias=True)
            return tf.clip_by_value(tf.round(img), 0.0, 255.0)

        return tf.cond(ok, decode, lambda: tf.zeros([self.size, self.size, 3], tf.float32)), ok

    def _caption_features(self, features):
        out = decode_graph(self.caption_model, features, self.beam_size, self.max_length, self.alpha)
        return {"captions": tokens_to_strings(out["tokens"], self.vocab_tokens), "log_probs": out["log_prob"],
                "tokens": out["tokens"], "lengths": out["length"]}

    def _serve(self, images):
        from captionbeam.model.encoders import preprocess_tf
        pixels, valid = tf.map_fn(self._decode_one, images,
                                  fn_output_signature=(tf.TensorSpec([self.size, self.size, 3], tf.float32),
                                                       tf.TensorSpec([], tf.bool)))
        features = self.encoder_model(preprocess_tf(pixels, self.mode), training=False)
        out = self._caption_features(tf.cast(features, tf.float32))
        out["captions"] = tf.where(valid, out["captions"], "")
        out["log_probs"] = tf.where(valid, out["log_probs"], 0.0)
        out["valid"] = valid
        return out


def export(model_dir: str, output: str, beam_size: int = 1, max_length: Optional[int] = None,
           alpha: float = 0.0, which: str = "best") -> dict:
    """Write the SavedModel to ``output`` (plus ``output/captionbeam_export.json``); returns its metadata."""
    from captionbeam.model.captioner import Captioner
    captioner = Captioner.load(model_dir, beam_size=beam_size, max_length=max_length, alpha=alpha, which=which)
    server = CaptionServer(captioner)
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
