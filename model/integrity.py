"""A model directory is self-contained and checked: file hashes, the bundled encoder file.

- ``vocab.txt``: ``config.json`` records ``vocab_sha256``; :func:`check_file` refuses another file.
- A user encoder file (``.keras`` / ``.h5`` / ``.tflite``) is recorded by the features job in
  ``features_spec.json`` with its absolute source path and SHA-256 (``encoder_spec.source`` /
  ``file_sha256``, the typed ``EncoderDescription``). ``captionbeam train`` copies it into
  ``<model_dir>/encoder/<name>`` and records ``encoder_file = {"path": "encoder/<name>", "sha256": ...}``; caption, bulk and export build the
  encoder from that copy only (never from the working directory) and refuse a copy whose hash differs.
"""
from __future__ import annotations

import os
from typing import Optional

from captionbeam.model.encoder_description import BundledFile
from captionbeam.model.hashing import sha256_file

ENCODER_DIR = "encoder"


class IntegrityError(ValueError):
    """A file of a model directory is not the one it was trained with."""


def check_file(path: str, expected: str, what: str) -> None:
    """Raise :class:`IntegrityError` naming ``path`` when its SHA-256 is not ``expected`` (no-op when
    nothing was recorded: model directories written before hashes were recorded)."""
    if not expected:
        return
    got = sha256_file(path)
    if got != expected:
        raise IntegrityError(f"{path}: {what} has SHA-256 {got[:16]}…, but the model was trained with "
                             f"{expected[:16]}… (a file from another model?); restore the original file")


def is_file_encoder(spec) -> bool:
    """Does this ``FeaturesSpec`` name a model-file encoder (not a registered name)?"""
    return spec.encoder_description().is_file


def bundle_encoder(spec, model_dir: str):
    """Copy a model-file encoder of ``spec`` (a ``FeaturesSpec`` from the data dir) into
    ``<model_dir>/encoder/`` and return the spec with ``encoder_file`` set; registered encoders
    are returned unchanged. The copy must have the hash the features job recorded."""
    import tensorflow as tf
    from dataclasses import replace
    if not is_file_encoder(spec):
        return spec
    enc = spec.encoder_description()
    name = os.path.basename(enc.name)
    rel = f"{ENCODER_DIR}/{name}"
    dest = f"{model_dir.rstrip('/')}/{rel}"
    recorded = enc.file_sha256
    have = spec.encoder_file.sha256 if spec.encoder_file else ""
    if have and tf.io.gfile.exists(dest) and sha256_file(dest) == have:
        return spec                     # already bundled (resume)
    source = enc.source or spec.weights or spec.encoder
    if not tf.io.gfile.exists(source):
        raise FileNotFoundError(f"encoder file {source} (recorded by the features job in features_spec.json) "
                                f"not found: the model dir must hold a copy of the encoder; put the file back "
                                f"there, or re-run captionbeam features")
    tf.io.gfile.makedirs(os.path.dirname(dest) if "://" not in dest else dest.rsplit("/", 1)[0])
    tf.io.gfile.copy(source, dest, overwrite=True)
    got = sha256_file(dest)
    if recorded and got != recorded:
        tf.io.gfile.remove(dest)
        raise IntegrityError(f"{source}: encoder file has SHA-256 {got[:16]}…, but the features were computed "
                             f"with {recorded[:16]}… (the file changed since captionbeam features ran)")
    return replace(spec, encoder_file=BundledFile(path=rel, sha256=got))


def encoder_file(spec, model_dir: str) -> Optional[str]:
    """Checked path of the model dir's copy of a model-file encoder (None for a registered encoder)."""
    import tensorflow as tf
    if not is_file_encoder(spec):
        return None
    bundled = spec.encoder_file
    if not bundled or not bundled.path:
        raise IntegrityError(f"{model_dir}: features_spec.json names the encoder file {spec.encoder!r} but the "
                             f"model dir holds no copy of it (trained before encoders were bundled): retrain, "
                             f"or copy the file to {model_dir.rstrip('/')}/{ENCODER_DIR}/ and record it")
    path = f"{model_dir.rstrip('/')}/{bundled.path}"
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path}: the model's encoder file is missing from the model dir")
    check_file(path, bundled.sha256, "encoder file")
    return path


def check_given_encoder(spec, path: str) -> str:
    """An encoder file given explicitly (``caption --encoder-file``): it must be the one the model was
    trained with (the hash recorded at training, else the one the features job recorded)."""
    recorded = (spec.encoder_file.sha256 if spec.encoder_file else "") or spec.encoder_description().file_sha256
    check_file(path, recorded, "encoder file")
    return path


def copy_bundled_encoder(spec, from_dir: str, to_dir: str) -> None:
    """Copy the (checked) bundled encoder file of ``from_dir`` into ``to_dir`` (a warm-started copy)."""
    import tensorflow as tf
    path = encoder_file(spec, from_dir)
    if path is None:
        return
    dest = f"{to_dir.rstrip('/')}/{spec.encoder_file.path}"
    tf.io.gfile.makedirs(dest.rsplit("/", 1)[0])
    tf.io.gfile.copy(path, dest, overwrite=True)
