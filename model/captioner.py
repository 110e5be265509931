"""``Captioner``: a trained model directory as one object that captions images or features, batched.

Used by ``captionbeam caption``, ``captionbeam evaluate``, the export and bulk captioning (issue 5)::

    c = Captioner.load(model_dir, beam_size=3, batch_size=32)
    c.caption_images([uint8 HxWx3 RGB arrays of any size])   # resize + preprocess + encode + decode
    c.caption_features(features)                             # [N, *feature_shape] float32
    c.model_version, c.encoder_name, c.image_size

The encoder is the one named in the model's ``features_spec.json`` (name, weights, input size,
preprocessing), so new images get exactly the features the model was trained on: images are squashed
to the encoder's square input with Pillow and the spec's resize filter (the same arithmetic as
``pipelines.images.resize_image`` of the features job), then the keras.applications module's own
preprocessing. The encoder is built on first use: a Captioner that only captions features (evaluation
on feature records) never builds it. Thread-safe: one instance may serve several threads.
"""
from __future__ import annotations

import dataclasses
import hashlib
import threading
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from captionbeam.model.vocab import VOCAB_FILE

DEFAULT_RESIZE = "bilinear"


@dataclass
class CaptionResult:
    caption: str
    tokens: List[str]
    log_prob: float
    attention: Optional[np.ndarray] = None   # [len(tokens) + 1 (<end>), L] for attention models
    finished: bool = True                    # False when max_length cut the caption off


def _read_bytes(path: str) -> bytes:
    import tensorflow as tf
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def hash_files(parts: Sequence[Tuple[str, str]]) -> str:
    """Stable 16-hex id of files: sha256 over (label, length, bytes) of each ``(label, path)`` in order."""
    h = hashlib.sha256()
    for label, path in parts:
        data = _read_bytes(path)
        h.update(label.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:16]


def model_version_of(model_dir: str, weights_file: str) -> str:
    """Stable id of a model: sha256 over config.json, vocab.txt, features_spec.json and the weights bytes."""
    base = model_dir.rstrip("/")
    names = ("config.json", VOCAB_FILE, "features_spec.json")
    return hash_files([(name, f"{base}/{name}") for name in names] + [("weights", weights_file)])


def local_copy(path: str) -> str:
    """A local path for a file a loader can only read locally (a gs:// file is copied to a temp dir)."""
    if "://" not in path:
        return path
    import os
    import tempfile
    import tensorflow as tf
    local = os.path.join(tempfile.mkdtemp(prefix="captionbeam-encoder-"), path.rsplit("/", 1)[-1])
    tf.io.gfile.copy(path, local, overwrite=True)
    return local


def resize_square(image: np.ndarray, size: int, method: str = DEFAULT_RESIZE) -> np.ndarray:
    """uint8 RGB (h, w, 3) -> (size, size, 3) with Pillow, squashed (as the features job resizes)."""
    from PIL import Image
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image (h, w, 3), got shape {image.shape}")
    image = np.asarray(image[..., :3], np.uint8)
    if image.shape[0] == size and image.shape[1] == size:
        return np.ascontiguousarray(image)
    filters = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX}
    return np.asarray(Image.fromarray(image, "RGB").resize((size, size), filters[method]), np.uint8)


class Captioner:
    def __init__(self, model, config, vocab, spec, model_dir: str, model_version: str, beam_size: int = 1,
                 max_length: Optional[int] = None, batch_size: int = 32, alpha: float = 0.0,
                 encoder_file: Optional[str] = None):
        from captionbeam.model.decode import Decoder
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        self.model, self.config, self.vocab, self.spec = model, config, vocab, spec
        self.model_dir = model_dir
        self.model_version = model_version
        self.batch_size = int(batch_size)
        if beam_size > len(vocab):     # a beam wider than the vocabulary has nothing to hold (it gave empty captions)
            raise ValueError(f"--beam-size {beam_size} is larger than the vocabulary of {model_dir} "
                             f"({len(vocab)} tokens); use at most {len(vocab)}")
        self.decoder = Decoder(model, max_length=max_length, beam_size=beam_size, alpha=alpha)
        self.beam_size, self.max_length, self.alpha = self.decoder.beam_size, self.decoder.max_length, alpha
        self.encoder_name = spec.encoder or config.encoder
        size = spec.image_size or config.image_size or [0, 0]
        self.image_size: Tuple[int, int] = (int(size[0]), int(size[-1]))
        self.resize_method = spec.resize_method or DEFAULT_RESIZE
        self.encoder_description = spec.encoder_description()
        self.has_attention = bool(model.has_attention)
        self.encoder_file = encoder_file   # a model-file encoder's path (features_spec.json names its base name)
        self.members: List[str] = [model_dir]   # the model dirs decoded together (several: an ensemble)
        self.source = model_dir                 # what was loaded: the model dir, or the ensemble's directory
        self._encoder = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_dir: str, beam_size: int = 1, max_length: Optional[int] = None, batch_size: int = 32,
             alpha: float = 0.0, which: str = "best", encoder_file: Optional[str] = None) -> "Captioner":
        from captionbeam.model.config import ModelConfig
        from captionbeam.model.ensemble import ensemble_members
        from captionbeam.model.model_dir import load_trained, weights_path
        members = ensemble_members(model_dir)
        if members is not None:                      # a directory with ensemble.json (model.ensemble)
            return cls.load_ensemble(members, beam_size=beam_size, max_length=max_length, batch_size=batch_size,
                                     alpha=alpha, which=which, encoder_file=encoder_file, source=model_dir)
        ModelConfig.load(model_dir)                  # a dir without config.json says so before naming weights
        weights = weights_path(model_dir, which)     # once: a best -> last fallback warns once
        model, config, vocab, spec = load_trained(model_dir, which=which, weights_file=weights)
        version = model_version_of(model_dir, weights)
        return cls(model, config, vocab, spec, model_dir, version, beam_size=beam_size, max_length=max_length,
                   batch_size=batch_size, alpha=alpha, encoder_file=encoder_file)

    @classmethod
    def load_ensemble(cls, model_dirs: Sequence[str], beam_size: int = 1, max_length: Optional[int] = None,
                      batch_size: int = 32, alpha: float = 0.0, which: str = "best",
                      encoder_file: Optional[str] = None, source: Optional[str] = None) -> "Captioner":
        """One Captioner over the members' averaged log-probabilities (``model.ensemble``); ValueError when
        their vocabularies differ or their encoders cannot serve as one. The encoder (and its bundled file) is
        the members' shared one, or across encoders the composite of theirs (each member reads its slice)."""
        from captionbeam.model.config import ModelConfig
        from captionbeam.model.ensemble import Ensemble, check_compatible, ensemble_version
        from captionbeam.model.model_dir import load_trained, weights_path
        loaded = []
        for member in model_dirs:
            ModelConfig.load(member)
            weights = weights_path(member, which)
            model, config, vocab, spec = load_trained(member, which=which, weights_file=weights)
            loaded.append((member, model, vocab, spec, model_version_of(member, weights)))
        reads = check_compatible([(d, vocab, spec) for d, _, vocab, spec, _ in loaded])
        ensemble = Ensemble([m for _, m, _, _, _ in loaded], slices=reads.slices,
                            feature_shape=reads.spec.feature_shape if reads.across_encoders else None)
        if reads.across_encoders:   # the composite encoder the members' encoders join into (model.ensemble)
            ensemble.config = dataclasses.replace(ensemble.config,
                                                  encoder_description=reads.spec.encoder_description())
        first_dir, _, vocab, _, _ = loaded[0]
        captioner = cls(ensemble, ensemble.config, vocab, reads.spec, first_dir,
                        ensemble_version([v for *_, v in loaded]),
                        beam_size=beam_size, max_length=max_length, batch_size=batch_size, alpha=alpha,
                        encoder_file=encoder_file)
        captioner.members = [d for d, *_ in loaded]
        captioner.source = source or first_dir
        return captioner

    @property
    def arch(self) -> str:
        """The architecture, or the members' joined by ``+`` for an ensemble (``merge+attention``)."""
        return "+".join(getattr(self.model, "archs", [self.config.arch]))

    # ------------------------------------------------------------------ encoder
    @property
    def encoder(self):
        """The image encoder of ``features_spec.json``, built on first use."""
        with self._lock:
            if self._encoder is None:
                from captionbeam.model.encoders import build_described
                from captionbeam.model.integrity import check_given_encoder, encoder_file
                name = self.encoder_description.name
                # the model dir's checked copy; an explicit --encoder-file must have the recorded hash too
                bundled = (check_given_encoder(self.spec, self.encoder_file) if self.encoder_file
                           else encoder_file(self.spec, self.model_dir))
                try:
                    self._encoder = build_described(self.encoder_description,
                                                    local_copy(bundled) if bundled else None)
                except ValueError as e:
                    raise ValueError(f"{self.model_dir}: cannot build the image encoder {name!r} named in "
                                     f"features_spec.json: {e}") from e
                got = tuple(int(d) for d in self._encoder.feature_shape)
                want = tuple(int(d) for d in self.config.feature_shape)
                if got != want:
                    raise ValueError(f"{self.model_dir}: encoder {name!r} gives features {got}, the model reads {want}")
            return self._encoder

    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Images of any size -> uint8 batch at the encoder's input size."""
        h, w = self.image_size
        return np.stack([resize_square(img, h, self.resize_method) for img in images]) if len(images) else \
            np.zeros([0, h, w, 3], np.uint8)

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        batch = self.prepare(images)
        enc = self.encoder
        return np.asarray(enc(enc.preprocess(batch)), np.float32)

    # ------------------------------------------------------------------ captioning
    def _results(self, out) -> List[CaptionResult]:
        results = []
        for i in range(len(out)):
            words = self.vocab.decode(out.tokens[i])
            att = None
            if out.attention is not None:
                att = out.attention[i, : int(out.length[i])]
            results.append(CaptionResult(caption=" ".join(words), tokens=words, log_prob=float(out.log_prob[i]),
                                         attention=att, finished=bool(out.finished[i])))
        return results

    def warm_up(self) -> float:
        """Trace the decoder once (one dummy image); returns the seconds it took."""
        import time
        t = time.monotonic()
        self.decoder(np.zeros([1] + [int(d) for d in self.config.feature_shape], np.float32))
        return time.monotonic() - t

    def caption_features(self, features: np.ndarray) -> List[CaptionResult]:
        features = np.asarray(features, np.float32)
        want = tuple(int(d) for d in self.config.feature_shape)
        if features.ndim == len(want):
            features = features[None]
        if tuple(features.shape[1:]) != want:
            raise ValueError(f"features of shape {features.shape[1:]} given; the model reads {want}")
        results: List[CaptionResult] = []
        for start in range(0, len(features), self.batch_size):
            results += self._results(self.decoder(features[start:start + self.batch_size]))
        return results

    def caption_images(self, images: Sequence[np.ndarray]) -> List[CaptionResult]:
        results: List[CaptionResult] = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start:start + self.batch_size])
            results += self.caption_features(self.encode_images(chunk))
        return results


def iterate_records(files: Sequence[str], feature_shape: Sequence[int], batch_size: int):
    """Batches of training records of a split, streamed: (image ids, features [B, ...], captions as id lists)."""
    import tensorflow as tf
    from captionbeam.model import records
    ds = tf.data.TFRecordDataset(list(files), num_parallel_reads=min(len(files), 4))
    ds = ds.map(lambda s: records.parse_training_example(s, feature_shape), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size).prefetch(2)
    for batch in ds:
        ids = [b.decode("utf-8") for b in batch["image_id"].numpy()]
        yield ids, batch["feature"].numpy(), batch["captions"].to_list()
