"""Image encoders: a registry of name -> :class:`EncoderSpec` (keras.applications builder, input size,
preprocessing, which output), plus user Keras models and TFLite files behind the same face.

No Beam here: the feature job, captioning of new images and the SavedModel export all use this module.

Preprocessing is *exactly* the keras.applications module's own ``preprocess_input`` (numpy path); a bare
mode (:func:`preprocess_numpy`, and :func:`preprocess_tf` in TensorFlow ops for graphs such as the export)
is ``keras.applications.imagenet_utils.preprocess_input`` with that mode. The modes:

============  =====================================================  ==========================
mode          arithmetic on RGB float32 0..255                         used by
============  =====================================================  ==========================
``caffe``     RGB->BGR, minus ImageNet BGR mean (103.939, 116.779,    vgg16, resnet50
              123.68), no scaling
``tf``        ``x / 127.5 - 1`` (range -1..1)                         mobilenet, mobilenet_v2,
                                                                      inception_v3
``torch``     ``x / 255``, minus mean (0.485, 0.456, 0.406), divided  (user models)
              by std (0.229, 0.224, 0.225)
``none``      unchanged (the model rescales inside)                   efficientnet_b0, user
                                                                      models by default
============  =====================================================  ==========================

Usage::

    enc = build_encoder("mobilenet", weights="imagenet", image_size=224)
    feats = enc(enc.preprocess(uint8_batch))      # (n, 1024) float32
    enc.description                               # what features_spec.json records (EncoderDescription)
    build_described(spec.encoder_description())   # the same encoder again, from a features_spec.json
"""
from __future__ import annotations

import importlib
import os
import re
import threading
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from captionbeam.model.encoder_description import (KERAS_FILE, MODEL_FILE_SUFFIXES, REGISTERED, TFLITE, TFLITE_SUFFIXES,
                                                   EncoderDescription)

WEIGHTS_CHOICES = ("imagenet", "none")
USER_MODEL_SUFFIXES = MODEL_FILE_SUFFIXES
PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")



class EncoderError(ValueError):
    """A bad encoder name, weights choice, image size or encoder file."""


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class EncoderSpec:
    """One registered encoder.

    ``module`` is the keras.applications module (``keras.applications.<module>``) holding both the
    builder and ``preprocess_input``; ``output`` is ``pooled`` (global average pool of the last conv
    block), ``layer`` (a named layer of the model *with* its classifier top, e.g. VGG16 ``fc2``) or
    ``map`` (the conv feature map of a named layer, or of the last block when ``layer`` is empty)."""
    name: str
    module: str
    builder: str
    default_size: int
    mode: str  # preprocessing mode of the module's preprocess_input (see module doc)
    output: str  # pooled | layer | map
    layer: str = ""
    min_size: int = 32
    imagenet_sizes: Tuple[int, ...] = ()  # sizes ImageNet weights exist for (empty: any >= min_size)
    builder_kwargs: Tuple[Tuple[str, object], ...] = ()
    description: str = ""
    parts: Tuple[str, ...] = ()  # a composite (``a+b``): the registered encoders whose outputs it concatenates

    @property
    def include_top(self) -> bool:
        return self.output == "layer"

    @property
    def is_composite(self) -> bool:
        return bool(self.parts)

    @property
    def preprocess_input(self) -> Callable:
        """The keras.applications module's own ``preprocess_input`` (a composite: unchanged pixels; each part
        applies its own inside the model)."""
        if self.is_composite:
            return lambda x: x
        return getattr(importlib.import_module(f"keras.applications.{self.module}"), "preprocess_input")

    @property
    def preprocessing_name(self) -> str:
        if self.is_composite:
            return "each part's keras.applications preprocess_input, inside the model (mode none)"
        return f"keras.applications.{self.module}.preprocess_input (mode {self.mode})"


_MOBILENET_SIZES = (128, 160, 192, 224)
_MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)

REGISTRY: Dict[str, EncoderSpec] = {s.name: s for s in (
    EncoderSpec("vgg16", "vgg16", "VGG16", 224, "caffe", "layer", "fc2", imagenet_sizes=(224,),
                description="VGG16 with its top, output of fc2 (4096-d): the classic tutorial's features"),
    EncoderSpec("vgg16-conv", "vgg16", "VGG16", 224, "caffe", "map", "block5_conv3",
                description="VGG16 block5_conv3 map (14x14x512 at 224) for attention"),
    EncoderSpec("mobilenet", "mobilenet", "MobileNet", 224, "tf", "pooled", imagenet_sizes=_MOBILENET_SIZES,
                description="MobileNet v1 1.0, global average pool (1024-d)"),
    EncoderSpec("mobilenet-conv", "mobilenet", "MobileNet", 224, "tf", "map", imagenet_sizes=_MOBILENET_SIZES,
                description="MobileNet v1 1.0 last conv map (7x7x1024 at 224) for attention"),
    EncoderSpec("mobilenet-0.25", "mobilenet", "MobileNet", 224, "tf", "pooled", imagenet_sizes=_MOBILENET_SIZES,
                builder_kwargs=(("alpha", 0.25),), description="MobileNet v1 0.25, pooled (256-d): fast, weak"),
    EncoderSpec("mobilenet_v2", "mobilenet_v2", "MobileNetV2", 224, "tf", "pooled",
                imagenet_sizes=_MOBILENET_V2_SIZES, description="MobileNetV2 1.0, pooled (1280-d)"),
    EncoderSpec("mobilenet_v2-conv", "mobilenet_v2", "MobileNetV2", 224, "tf", "map",
                imagenet_sizes=_MOBILENET_V2_SIZES, description="MobileNetV2 1.0 last conv map (7x7x1280 at 224)"),
    EncoderSpec("resnet50", "resnet50", "ResNet50", 224, "caffe", "pooled",
                description="ResNet50, pooled (2048-d)"),
    EncoderSpec("inception_v3", "inception_v3", "InceptionV3", 299, "tf", "pooled", min_size=75,
                description="InceptionV3, pooled (2048-d), 299x299 input"),
    EncoderSpec("efficientnet_b0", "efficientnet", "EfficientNetB0", 224, "none", "pooled",
                description="EfficientNetB0, pooled (1280-d); rescaling is inside the model"),
)}


def encoder_names() -> List[str]:
    return list(REGISTRY)


COMPOSITE_SEPARATOR = "+"
_VECTOR_OUTPUTS = ("pooled", "layer")


def composite_name(parts) -> str:
    return COMPOSITE_SEPARATOR.join(parts)


def composite_spec(name: str) -> EncoderSpec:
    """The spec of ``a+b[+c...]``: registered encoders run on the same pixels, their outputs concatenated on
    the last axis (maps of one grid, or vectors). Pure; :class:`EncoderError` naming ``--encoder``."""
    parts = tuple(name.split(COMPOSITE_SEPARATOR))
    unknown = [p for p in parts if p not in REGISTRY]
    if unknown or len(parts) < 2:
        raise EncoderError(f"--encoder: {name!r}: a composite joins two or more registered encoders with "
                           f"{COMPOSITE_SEPARATOR!r}; unknown: {', '.join(repr(p) for p in unknown) or 'none'} "
                           f"(registered: {', '.join(REGISTRY)})")
    if len(set(parts)) != len(parts):
        raise EncoderError(f"--encoder: {name!r} names an encoder twice")
    specs = [REGISTRY[p] for p in parts]
    maps = {s.output == "map" for s in specs}
    if len(maps) != 1:
        raise EncoderError(f"--encoder: {name!r} mixes feature maps and vectors; join maps with maps "
                           f"(e.g. mobilenet-conv+mobilenet_v2-conv) or vectors with vectors")
    sizes = {s.default_size for s in specs}
    if len(sizes) != 1:
        raise EncoderError(f"--encoder: {name!r}: its parts take different input sizes "
                           f"({', '.join(f'{s.name} {s.default_size}' for s in specs)})")
    imagenet = [set(s.imagenet_sizes) for s in specs if s.imagenet_sizes]
    common = tuple(sorted(set.intersection(*imagenet))) if imagenet else ()
    return EncoderSpec(name, "", "", specs[0].default_size, "none", "map" if maps == {True} else "pooled",
                       min_size=max(s.min_size for s in specs), imagenet_sizes=common, parts=parts,
                       description=f"{' and '.join(parts)} on the same pixels, concatenated")


def spec_of(name: str) -> Optional[EncoderSpec]:
    """The spec of a registered name or a composite of registered names (``a+b``); None for anything else
    (a model file). A malformed composite raises :class:`EncoderError`."""
    if name in REGISTRY:
        return REGISTRY[name]
    if COMPOSITE_SEPARATOR in name and not is_model_file(name):
        return composite_spec(name)
    return None


def is_model_file(name: str) -> bool:
    return name.lower().endswith(USER_MODEL_SUFFIXES + TFLITE_SUFFIXES)


def _exists(path: str) -> bool:
    if "://" in path:
        import tensorflow as tf
        return tf.io.gfile.exists(path)
    return os.path.exists(path)


# ----------------------------------------------------------------------------- preprocessing
def _check_mode(mode: str) -> str:
    if mode not in PREPROCESSING_MODES:
        raise EncoderError(f"unknown preprocessing mode {mode!r}; choose one of {', '.join(PREPROCESSING_MODES)}")
    return mode


def preprocess_numpy(images: np.ndarray, mode: str) -> np.ndarray:
    """uint8/float RGB batch -> float32 with a mode's arithmetic: ``keras.applications.imagenet_utils.
    preprocess_input`` itself (``none``: unchanged), on a fresh copy (keras works in place on floats)."""
    from keras.applications import imagenet_utils
    x = np.array(images, dtype=np.float32, copy=True)
    if _check_mode(mode) != "none":
        x = imagenet_utils.preprocess_input(x, data_format="channels_last", mode=mode)
    return np.ascontiguousarray(x, dtype=np.float32)


def preprocess_tf(images, mode: str):
    """The same in TensorFlow ops (uint8 or float tensor ``[..., H, W, 3]`` -> float32: keras's tensor path
    of ``imagenet_utils.preprocess_input``), for graphs such as the exported SavedModel. ``mode`` is a
    preprocessing mode or a registered encoder name."""
    import tensorflow as tf
    from keras.applications import imagenet_utils
    if mode in REGISTRY:
        mode = REGISTRY[mode].mode
    x = tf.cast(images, tf.float32)
    if _check_mode(mode) == "none":
        return x
    return imagenet_utils.preprocess_input(x, data_format="channels_last", mode=mode)


def preprocess_function(name_or_mode: str) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 batch -> float32 batch for a registered encoder (its keras.applications module's own
    ``preprocess_input``) or a bare mode (``caffe``, ``tf``, ``torch``, ``none``)."""
    if name_or_mode in REGISTRY:
        fn = REGISTRY[name_or_mode].preprocess_input

        def keras_preprocess(images: np.ndarray) -> np.ndarray:
            # keras may modify float input in place: always hand it a fresh float32 copy
            return np.asarray(fn(np.array(images, dtype=np.float32, copy=True)), dtype=np.float32)
        return keras_preprocess
    if name_or_mode in PREPROCESSING_MODES:
        return lambda images: preprocess_numpy(images, name_or_mode)
    raise EncoderError(f"unknown preprocessing {name_or_mode!r}; choose a mode ({', '.join(PREPROCESSING_MODES)}) "
                       f"or an encoder name ({', '.join(REGISTRY)})")


def _mode_of(preprocessing: str) -> str:
    return REGISTRY[preprocessing].mode if preprocessing in REGISTRY else preprocessing


# ----------------------------------------------------------------------------- config + validation
@dataclass(frozen=True)
class EncoderConfig:
    """What to build: a registered name or a model file, weights, input size, preprocessing override."""
    name: str = "vgg16"
    weights: str = "imagenet"  # imagenet | none | path to a weights file (registered encoders only)
    image_size: Optional[int] = None  # None: the encoder's default (or the model file's input size)
    preprocessing: Optional[str] = None  # None: the family's own (registered) / "none" (model files)

    def resolved_size(self) -> Optional[int]:
        if self.image_size is not None:
            return self.image_size
        spec = spec_of(self.name)
        return spec.default_size if spec else None


def validate_config(config: EncoderConfig) -> None:
    """Cheap checks (no model built): raise :class:`EncoderError` naming the flag at fault."""
    name = config.name
    spec = spec_of(name)
    if spec is None and not is_model_file(name):
        raise EncoderError(f"--encoder: unknown encoder {name!r}; choose one of {', '.join(REGISTRY)}, two or "
                           f"more of them joined by {COMPOSITE_SEPARATOR!r} (outputs concatenated), "
                           f"or a path to a {'/'.join(USER_MODEL_SUFFIXES + TFLITE_SUFFIXES)} file")
    if is_model_file(name) and not _exists(name):
        raise EncoderError(f"--encoder: model file not found: {name}")
    if config.image_size is not None and config.image_size <= 0:
        raise EncoderError(f"--image-size: must be a positive number of pixels, got {config.image_size}")
    if config.preprocessing is not None and config.preprocessing not in PREPROCESSING_MODES + tuple(REGISTRY):
        raise EncoderError(f"--preprocessing: unknown {config.preprocessing!r}; choose a mode "
                           f"({', '.join(PREPROCESSING_MODES)}) or an encoder name")
    weights = config.weights
    if spec is not None and spec.is_composite:
        if weights not in WEIGHTS_CHOICES:
            raise EncoderError(f"--weights: a composite encoder takes imagenet or none (one weights file cannot "
                               f"serve {len(spec.parts)} networks), got {weights}")
        if config.preprocessing is not None:
            raise EncoderError(f"--preprocessing: a composite encoder applies each part's own preprocessing; "
                               f"drop --preprocessing {config.preprocessing}")
    if spec is not None and weights not in WEIGHTS_CHOICES and not _exists(weights):
        raise EncoderError(f"--weights: must be imagenet, none or an existing weights file; not found: {weights}")
    if spec is not None:
        size = config.resolved_size()
        if size < spec.min_size:
            raise EncoderError(f"--image-size: {name} needs at least {spec.min_size} pixels, got {size}")
        for part in [REGISTRY[p] for p in spec.parts] or [spec]:
            if part.include_top and weights == "imagenet" and size != part.default_size:
                raise EncoderError(f"--image-size: {part.name} with its ImageNet top only takes {part.default_size}, "
                                   f"got {size} (use --weights none, or {part.name}-conv)")


# ----------------------------------------------------------------------------- encoders
class Encoder:
    """Common face: ``preprocess(uint8 batch) -> model input``, ``__call__(model input) -> features``,
    ``encode(uint8 batch)`` for both, ``feature_shape``, ``image_size``, ``name``, ``spec_dict()``."""
    name: str
    image_size: int
    feature_shape: Tuple[int, ...]
    preprocessing: str
    weights: str
    kind: str
    input_dtype: str = "float32"

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.shape[1:] != (self.image_size, self.image_size, 3):
            raise EncoderError(f"{self.name}: expected images of shape (n, {self.image_size}, {self.image_size}, 3), "
                               f"got {images.shape}")
        return self(self.preprocess(images))

    def _described(self) -> Dict[str, object]:
        """Fields of :attr:`description` beyond the common ones (family, output, source, ...)."""
        return {}

    @property
    def description(self) -> EncoderDescription:
        """The typed description features_spec.json records (:func:`build_described` rebuilds from it)."""
        fields = {"preprocessing_mode": _mode_of(self.preprocessing), **self._described()}
        return EncoderDescription(name=self.name, kind=self.kind, weights=self.weights, image_size=self.image_size,
                                  preprocessing=self.preprocessing, feature_shape=tuple(self.feature_shape),
                                  input_dtype=self.input_dtype, **fields)


class KerasEncoder(Encoder):
    """A Keras model (keras.applications or a user's file), run through one traced ``tf.function``."""

    def __init__(self, model, name: str, image_size: int, preprocessing: str, preprocess_fn: Callable,
                 weights: str, kind: str, extra: Optional[Dict[str, object]] = None):
        import tensorflow as tf
        self.model = model
        self.name = name
        self.image_size = image_size
        self.preprocessing = preprocessing
        self._preprocess_fn = preprocess_fn
        self.weights = weights
        self.kind = kind
        self.extra = dict(extra or {})
        self.feature_shape = tuple(int(d) for d in model.output_shape[1:])
        self._fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                               input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        return self._preprocess_fn(images)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(np.asarray(batch, np.float32)), dtype=np.float32)

    def _described(self) -> Dict[str, object]:
        return dict(self.extra)


class TFLiteEncoder(Encoder):
    """A ``.tflite`` model through ``tf.lite.Interpreter``. uint8 (quantized) input models get raw pixels;
    float input models get the chosen preprocessing. Quantized outputs are dequantized to float32.
    The interpreter is not thread-safe, so calls are serialised with a lock."""

    kind = TFLITE

    def __init__(self, path: str, image_size: Optional[int] = None, preprocessing: Optional[str] = None):
        import tensorflow as tf
        with tf.io.gfile.GFile(path, "rb") as f:
            content = f.read()
        self.path = path
        self.name = os.path.basename(path)
        self.weights = path
        self._interpreter = tf.lite.Interpreter(model_content=content)
        self._interpreter.allocate_tensors()
        self._lock = threading.Lock()
        inp = self._interpreter.get_input_details()[0]
        out = self._interpreter.get_output_details()[0]
        shape = [int(d) for d in inp["shape"]]
        if len(shape) != 4 or shape[3] != 3:
            raise EncoderError(f"--encoder: {path}: expected an image input (n, h, w, 3), got {shape}")
        if shape[1] != shape[2]:
            raise EncoderError(f"--encoder: {path}: only square inputs are supported, got {shape[1]}x{shape[2]}")
        if image_size is not None and image_size != shape[1]:
            raise EncoderError(f"--image-size: {path} takes {shape[1]}x{shape[2]} input, got {image_size}")
        self.image_size = shape[1]
        self._in_index, self._out_index = inp["index"], out["index"]
        self._in_dtype = np.dtype(inp["dtype"])
        self._in_quant = inp.get("quantization", (0.0, 0))
        self._out_quant = out.get("quantization", (0.0, 0))
        self._out_dtype = np.dtype(out["dtype"])
        self.input_dtype = self._in_dtype.name
        self.feature_shape = tuple(int(d) for d in out["shape"][1:])
        if self._in_dtype == np.uint8:
            self.preprocessing = preprocessing or "none"
            if self.preprocessing != "none":
                raise EncoderError(f"--preprocessing: {path} takes uint8 pixels; only 'none' applies")
            self._preprocess_fn = lambda images: np.asarray(images, np.uint8)
        else:
            self.preprocessing = preprocessing or "none"
            self._preprocess_fn = preprocess_function(self.preprocessing)
        self._batch = shape[0]

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        return self._preprocess_fn(images)

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] != self._batch:
            self._interpreter.resize_tensor_input(self._in_index, list(batch.shape))
            self._interpreter.allocate_tensors()
            self._batch = batch.shape[0]
        self._interpreter.set_tensor(self._in_index, batch)
        self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._out_index))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=self._in_dtype)
        with self._lock:
            try:
                out = self._invoke(batch)
            except (RuntimeError, ValueError):  # a model with a fixed batch dimension: one image at a time
                out = np.concatenate([self._invoke(batch[i:i + 1]) for i in range(batch.shape[0])])
        if self._out_dtype in (np.uint8, np.int8, np.int16, np.int32) and self._out_quant[0]:
            scale, zero = self._out_quant
            out = (out.astype(np.float32) - zero) * scale
        return out.astype(np.float32).reshape((batch.shape[0],) + self.feature_shape)

    def _described(self) -> Dict[str, object]:
        return {"source": self.path}


def seeded_init(model, seed: int = 0) -> None:
    """Re-draw every kernel of ``model`` from a seeded He-uniform (``limit = sqrt(6 / fan_in)``, which keeps
    activations alive through deep ReLU stacks), so ``--weights none`` gives the same weights in every worker
    process and every run (Keras's own random init differs per build). Biases and batch-norm statistics are
    constant at build time already; other variables (e.g. EfficientNet's normalisation constants) are left
    as built."""
    import keras
    depthwise = {id(w) for layer in model.layers if isinstance(layer, keras.layers.DepthwiseConv2D)
                 for w in layer.weights}
    for i, v in enumerate(model.weights):
        name = getattr(v, "path", v.name)
        if not name.endswith("kernel"):
            continue
        shape = tuple(int(d) for d in v.shape)
        receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        if id(v) in depthwise or name.endswith("depthwise_kernel"):
            fan_in = receptive  # each output channel sees one input channel
        else:
            fan_in = receptive * (shape[-2] if len(shape) >= 2 else 1)
        limit = float(np.sqrt(6.0 / max(1, fan_in)))
        rng = np.random.default_rng([seed, i])
        v.assign(rng.uniform(-limit, limit, size=shape).astype(np.float32))


def _preprocessing_layer(mode: str, name: str):
    """A Keras layer applying a preprocessing mode's arithmetic (:func:`preprocess_tf`) inside a model."""
    import keras

    class Preprocess(keras.layers.Layer):
        def call(self, x):
            return preprocess_tf(x, mode)

    return Preprocess(name=name)


def _build_composite(spec: EncoderSpec, weights: str, size: int) -> KerasEncoder:
    """One Keras model over raw pixels (0..255): each part's own preprocessing and network on the same input,
    outputs concatenated on the last axis. One model, so the export serves it like any Keras encoder."""
    import keras
    parts = [_build_registered(REGISTRY[p], weights, size, None) for p in spec.parts]
    grids = {tuple(part.feature_shape[:-1]) for part in parts}
    if len(grids) != 1:
        raise EncoderError(f"--encoder: {spec.name}: at {size} px its parts give outputs of different grids ("
                           + ", ".join(f"{p.name} {tuple(p.feature_shape)}" for p in parts) + ")")
    pixels = keras.Input((size, size, 3), name="pixels")
    outputs = []
    for i, (name, part) in enumerate(zip(spec.parts, parts)):
        part.model.name = f"part{i}_{part.model.name}"    # two keras.applications models may share a name
        outputs.append(part.model(_preprocessing_layer(REGISTRY[name].mode, f"part{i}_preprocess")(pixels)))
    model = keras.Model(pixels, keras.layers.Concatenate(axis=-1)(outputs), name="composite_encoder")
    extra = {"family": "composite", "output": spec.output, "layer": "", "preprocessing_mode": "none"}
    return KerasEncoder(model, spec.name, size, spec.preprocessing_name, preprocess_function("none"), weights,
                        kind=REGISTERED, extra=extra)


def _build_registered(spec: EncoderSpec, weights: str, size: int, preprocessing: Optional[str]) -> KerasEncoder:
    import keras
    if spec.is_composite:
        return _build_composite(spec, weights, size)
    module = importlib.import_module(f"keras.applications.{spec.module}")
    builder = getattr(module, spec.builder)
    kwargs = dict(spec.builder_kwargs)
    kwargs.update(include_top=spec.include_top, input_shape=(size, size, 3))
    kwargs["weights"] = None if weights == "none" else weights
    if spec.output == "pooled":
        kwargs["pooling"] = "avg"
    try:
        base = builder(**kwargs)
    except Exception as e:  # noqa: BLE001 - most often: ImageNet weights not downloadable offline
        if weights == "imagenet":
            raise EncoderError(missing_weights_message(spec.name, e)) from e
        raise
    if weights == "none":
        seeded_init(base)
    if spec.layer:
        model = keras.Model(base.inputs, base.get_layer(spec.layer).output, name=f"{spec.name}_encoder")
    else:
        model = base
    if preprocessing is None or preprocessing == spec.name:
        pre_name, pre_fn = spec.preprocessing_name, preprocess_function(spec.name)
    else:
        pre_name = REGISTRY[preprocessing].preprocessing_name if preprocessing in REGISTRY else preprocessing
        pre_fn = preprocess_function(preprocessing)
    extra = {"family": spec.module, "output": spec.output, "layer": spec.layer,
             "preprocessing_mode": _mode_of(preprocessing or spec.name)}
    return KerasEncoder(model, spec.name, size, pre_name, pre_fn, weights, kind=REGISTERED, extra=extra)


def _build_user_keras(path: str, size: Optional[int], preprocessing: Optional[str]) -> KerasEncoder:
    import keras
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001
        raise EncoderError(f"--encoder: cannot load Keras model {path}: {type(e).__name__}: {e}") from e
    shape = model.input_shape
    if isinstance(shape, list):
        raise EncoderError(f"--encoder: {path} has {len(shape)} inputs; an encoder takes one image input")
    if len(shape) != 4 or shape[3] != 3:
        raise EncoderError(f"--encoder: {path}: expected an image input (n, h, w, 3), got {shape}")
    h, w = shape[1], shape[2]
    if h is not None and w is not None and h != w:
        raise EncoderError(f"--encoder: {path}: only square inputs are supported, got {h}x{w}")
    if h is not None and size is not None and size != h:
        raise EncoderError(f"--image-size: {path} takes {h}x{w} input, got {size}")
    size = h if h is not None else size
    if size is None:
        raise EncoderError(f"--image-size: {path} accepts any input size; say which one")
    pre = preprocessing or "none"
    pre_fn = preprocess_function(pre)
    pre_name = REGISTRY[pre].preprocessing_name if pre in REGISTRY else pre
    return KerasEncoder(model, os.path.basename(path), size, pre_name, pre_fn, weights=path, kind=KERAS_FILE,
                        extra={"source": path, "preprocessing_mode": _mode_of(pre)})


def build_encoder(name: str = "vgg16", weights: str = "imagenet", image_size: Optional[int] = None,
                  preprocessing: Optional[str] = None) -> Encoder:
    """Build an encoder: a registered name (see :data:`REGISTRY`), a ``.keras``/``.h5`` model file or a
    ``.tflite`` file. ``weights`` only applies to registered names."""
    config = EncoderConfig(name=name, weights=weights, image_size=image_size, preprocessing=preprocessing)
    validate_config(config)
    lower = name.lower()
    if lower.endswith(TFLITE_SUFFIXES):
        return TFLiteEncoder(name, image_size, preprocessing)
    if lower.endswith(USER_MODEL_SUFFIXES):
        return _build_user_keras(name, image_size, preprocessing)
    return _build_registered(spec_of(name), weights, config.resolved_size(), preprocessing)


def build_from_config(config: EncoderConfig) -> Encoder:
    return build_encoder(config.name, config.weights, config.image_size, config.preprocessing)


def encoder_table() -> List[Dict[str, object]]:
    """One row per registered encoder (for --help and the docs): shapes at the default size."""
    rows = []
    for spec in REGISTRY.values():
        rows.append({"name": spec.name, "input_size": spec.default_size, "output": spec.output,
                     "layer": spec.layer, "preprocessing": spec.preprocessing_name, "description": spec.description})
    return rows


def encoders_help() -> str:
    """The ``--encoder`` help: every registered encoder (from :data:`REGISTRY`), then model files."""
    names = []
    for i, spec in enumerate(REGISTRY.values()):
        names.append(f"{spec.name} ({'default; ' if i == 0 else ''}{spec.description})")
    return "; ".join(names) + f"; or a path to a {'/'.join(USER_MODEL_SUFFIXES)} model or a .tflite file"


_WEIGHTS_FILE = re.compile(r"([\w.+-]+\.(?:h5|keras|weights\.h5))\b")


def missing_weights_message(name: str, error: BaseException) -> str:
    """The error of ``--weights imagenet`` when Keras could not fetch the file: which file, and where to
    put it offline (Keras looks in ``$KERAS_HOME/models/`` before downloading)."""
    text = f"{type(error).__name__}: {error}"
    found = _WEIGHTS_FILE.findall(str(error))
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    where = os.path.join(home, "models")
    if found:
        file_name = found[-1]
        how = (f"offline, download {file_name} elsewhere and put it at $KERAS_HOME/models/{file_name} "
               f"(here: {os.path.join(where, file_name)})")
    else:
        how = f"offline, put Keras's weight file for {name} into $KERAS_HOME/models/ (here: {where}/)"
    return (f"--weights imagenet: could not get the ImageNet weights of {name} ({text}); {how}, "
            f"or use --weights none / --weights PATH")


def describe(config: EncoderConfig) -> EncoderDescription:
    """The description ``features_spec.json`` will record, without building a registered encoder (no
    weights loaded; its ``feature_shape`` is empty: the job takes it from the features). Model files are
    loaded (cheap, and it validates them up front) and hashed."""
    validate_config(config)
    if is_model_file(config.name):
        # the file's absolute path and hash: `captionbeam train` copies it into the model dir from there
        # and refuses another file (model.integrity); nothing later looks it up in the working directory
        from captionbeam.model.hashing import sha256_file
        source = config.name if "://" in config.name else os.path.abspath(config.name)
        return replace(build_from_config(config).description, source=source, file_sha256=sha256_file(source))
    spec = spec_of(config.name)
    size = config.resolved_size()
    pre = config.preprocessing
    if pre is None or pre == spec.name:
        pre_name, mode = spec.preprocessing_name, spec.mode
    else:
        pre_name = REGISTRY[pre].preprocessing_name if pre in REGISTRY else pre
        mode = _mode_of(pre)
    return EncoderDescription(name=spec.name, kind=REGISTERED, weights=config.weights, image_size=size,
                              preprocessing=pre_name, preprocessing_mode=mode,
                              family="composite" if spec.is_composite else spec.module, output=spec.output,
                              layer=spec.layer)


def config_of(description: EncoderDescription, model_file: Optional[str] = None) -> EncoderConfig:
    """The :class:`EncoderConfig` (``--encoder``, ``--weights``, ``--image-size``, ``--preprocessing``) that
    builds the described encoder again. A model file is read from ``model_file`` (e.g. a model dir's
    checked copy), else from where the features job read it."""
    d = description
    size = d.image_size or None
    if d.is_file:
        path = model_file or d.source or d.name
        return EncoderConfig(name=path, weights="none", image_size=size, preprocessing=d.preprocessing_mode or None)
    spec = spec_of(d.name)
    if spec is None:
        raise EncoderError(f"encoder {d.name!r} of features_spec.json is not registered here; "
                           f"known: {', '.join(REGISTRY)}")
    own = spec.mode
    override = d.preprocessing_mode if d.preprocessing_mode and d.preprocessing_mode != own else None
    return EncoderConfig(name=d.name, weights=d.weights or "imagenet", image_size=size, preprocessing=override)


def build_described(description: EncoderDescription, model_file: Optional[str] = None) -> Encoder:
    """The one way to rebuild an encoder from its description (features workers, captioner, export,
    bulk, retrain); refuses an encoder whose features do not have the recorded shape."""
    encoder = build_from_config(config_of(description, model_file))
    want = tuple(description.feature_shape)
    if want and tuple(encoder.feature_shape) != want:
        raise EncoderError(f"encoder {description.name!r} gives features {tuple(encoder.feature_shape)}, "
                           f"the description records {want}")
    return encoder
