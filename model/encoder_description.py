"""The one typed description of an image encoder: what ``captionbeam features`` used, written once into
``features_spec.json`` (``encoder_spec``) and read back by everything that rebuilds the encoder (the
features job's workers, the captioner, the integrity check, retrain, export, bulk) through
``model.encoders.build_described``.

Pure data and parsing: no TensorFlow, no Keras, no registry lookups (``model.encoders`` makes them).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Mapping, Optional, Tuple

REGISTERED = "keras.applications"   # a name of model.encoders.REGISTRY
KERAS_FILE = "keras-file"           # a user's .keras / .h5 model
TFLITE = "tflite"                   # a user's .tflite model
KINDS = (REGISTERED, KERAS_FILE, TFLITE)
FILE_KINDS = (KERAS_FILE, TFLITE)
MODEL_FILE_SUFFIXES = (".keras", ".h5", ".hdf5")
TFLITE_SUFFIXES = (".tflite",)


class DescriptionError(ValueError):
    """A features_spec.json whose encoder description cannot be read."""


def kind_of_name(name: str) -> str:
    """The kind an ``--encoder`` value names: a model file by its suffix, else a registered name."""
    lower = name.lower()
    if lower.endswith(TFLITE_SUFFIXES):
        return TFLITE
    if lower.endswith(MODEL_FILE_SUFFIXES):
        return KERAS_FILE
    return REGISTERED


_MODE_IN_NAME = re.compile(r"\(mode (\w+)\)\s*$")


def mode_of_display(preprocessing: str) -> str:
    """The mode in a preprocessing display name (``keras.applications.x.preprocess_input (mode tf)``
    -> ``tf``); a bare mode or encoder name is returned as it is."""
    m = _MODE_IN_NAME.search(preprocessing or "")
    return m.group(1) if m else (preprocessing or "")


@dataclass(frozen=True)
class EncoderDescription:
    """What turns an image into features.

    ``name``: the registered name, or the model file's base name; ``source``: the model file's absolute
    path (or gs:// URL) when the features were made, ``file_sha256`` its hash (model files only).
    ``preprocessing_mode``: the arithmetic applied (``caffe``/``tf``/``torch``/``none``);
    ``preprocessing``: how it is shown (the keras.applications function for registered encoders)."""
    name: str
    kind: str = REGISTERED
    weights: str = "imagenet"
    image_size: int = 0
    preprocessing_mode: str = ""
    preprocessing: str = ""
    feature_shape: Tuple[int, ...] = ()
    input_dtype: str = "float32"
    family: str = ""
    output: str = ""
    layer: str = ""
    source: str = ""
    file_sha256: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DescriptionError(f"encoder {self.name!r}: unknown kind {self.kind!r}; one of {', '.join(KINDS)}")
        object.__setattr__(self, "feature_shape", tuple(int(d) for d in (self.feature_shape or ())))
        object.__setattr__(self, "image_size", int(self.image_size or 0))

    @property
    def is_file(self) -> bool:
        return self.kind in FILE_KINDS

    def with_feature_shape(self, shape) -> "EncoderDescription":
        return replace(self, feature_shape=tuple(int(d) for d in shape))

    def identity(self) -> Tuple:
        """What makes two encoders give the same features (not where a model file lies)."""
        return (self.name, self.kind, "" if self.is_file else self.weights, self.image_size,
                self.preprocessing_mode, self.feature_shape, self.input_dtype, self.family, self.output,
                self.layer, self.file_sha256)

    @property
    def fingerprint(self) -> str:
        """16 hex digits over :meth:`identity` (the encoder's hash)."""
        return hashlib.sha256(json.dumps(self.identity()).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["feature_shape"] = list(self.feature_shape)
        d["image_size"] = [self.image_size, self.image_size]   # features_spec.json's [h, w]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "EncoderDescription":
        """From ``features_spec.json``'s ``encoder_spec`` (this layout, or the older untyped one of
        ``extra.encoder_spec``: ``encoder``, ``image_size`` as ``[h, w]``, no ``preprocessing_mode``)."""
        if not isinstance(d, Mapping):
            raise DescriptionError(f"encoder_spec must be an object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known and v is not None}
        values.setdefault("name", d.get("encoder"))
        if not values.get("name"):
            raise DescriptionError("encoder_spec names no encoder")
        size = values.get("image_size")
        if isinstance(size, (list, tuple)):
            values["image_size"] = int(size[0]) if size else 0
        values.setdefault("kind", kind_of_name(str(values["name"])))
        if not values.get("preprocessing_mode"):
            values["preprocessing_mode"] = mode_of_display(str(values.get("preprocessing", "")))
        return cls(**values)

    @classmethod
    def from_spec_fields(cls, encoder: str, weights: str, image_size, preprocessing: str,
                         feature_shape=()) -> "EncoderDescription":
        """For a features_spec.json written before the description existed: its top-level fields."""
        size = image_size[0] if isinstance(image_size, (list, tuple)) and image_size else image_size
        kind = kind_of_name(encoder)
        return cls(name=encoder.rsplit("/", 1)[-1] if kind in FILE_KINDS else encoder, kind=kind, weights=weights,
                   image_size=int(size or 0), preprocessing=preprocessing,
                   preprocessing_mode=mode_of_display(preprocessing), feature_shape=tuple(feature_shape or ()),
                   source=encoder if kind in FILE_KINDS else "")


@dataclass(frozen=True)
class BundledFile:
    """A model-file encoder's copy inside a model dir (``encoder_file`` of its features_spec.json)."""
    path: str      # relative to the model dir: encoder/<name>
    sha256: str

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, object]]) -> Optional["BundledFile"]:
        if not d:
            return None
        return cls(path=str(d.get("path") or ""), sha256=str(d.get("sha256") or ""))
