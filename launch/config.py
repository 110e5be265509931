"""Typed configuration of ``captionbeam run`` (``--config run.yaml`` and flags).

A YAML file mirrors the dataclasses below section by section; flags given on the command line
override the file; what neither sets keeps the defaults (the embedded sample dataset)::

    workdir: gs://my-bucket/captionbeam/run1      # output root, local or gs://
    data:
      images: ["gs://my-bucket/flickr8k/images/*.jpg"]
      captions: gs://my-bucket/flickr8k/Flickr8k.token.txt
      splits: {train: gs://.../Flickr_8k.trainImages.txt, dev: ..., test: ...}
    features: {encoder: mobilenet, weights: imagenet, image_size: 224, batch_size: 32}
    captions: {clean: seed, min_count: 5}
    train:   {arch: merge, epochs: 20, batch_size: 64, extra: ["--learning-rate", "0.001"]}
    evaluate: {split: test, beam_size: 3}
    runner:  {profile: dataflow, pipeline_args: ["--max_num_workers=50"]}

Unknown keys, and values of the wrong type (``epochs: "three"``), are errors naming the key and what
it expects (a typo must not silently fall back to a default, nor fail later as a ValueError).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Mapping, Optional

DEFAULT_WORKDIR = "work/run"


class ConfigError(ValueError):
    """A bad ``run.yaml`` or flag value; the message names the key."""


@dataclass
class SampleSection:
    """The embedded default: ``captionbeam sample`` when no ``data.images`` are given."""
    images: int = 240
    size: int = 64
    seed: int = 0


@dataclass
class DataSection:
    images: List[str] = field(default_factory=list)   # globs, local or gs://; empty = the sample dataset
    captions: str = ""                                 # Flickr8k token / Kaggle CSV / COCO JSON / JSONL
    caption_format: str = "auto"
    splits: Dict[str, str] = field(default_factory=dict)   # split name -> Flickr8k-style split file

    @property
    def is_sample(self) -> bool:
        return not self.images


@dataclass
class FeaturesSection:
    encoder: str = "thumbnail"       # the embedded default's tiny encoder (model.thumbnail.build_thumbnail_encoder)
    weights: str = "none"
    image_size: int = 64
    batch_size: int = 32
    extra: List[str] = field(default_factory=list)    # more `captionbeam features` flags


@dataclass
class CaptionsSection:
    clean: str = "basic"
    min_count: int = 2
    extra: List[str] = field(default_factory=list)


@dataclass
class TrainSection:
    arch: str = "merge"
    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 0.003
    extra: List[str] = field(default_factory=list)    # more `captionbeam train` flags


@dataclass
class EvaluateSection:
    split: str = "test"
    beam_size: int = 1
    caption_images: int = 6        # held-out images captioned with `captionbeam caption` for the report
    extra: List[str] = field(default_factory=list)


@dataclass
class RunnerSection:
    profile: Optional[str] = None
    profiles_file: Optional[str] = None
    pipeline_args: List[str] = field(default_factory=list)


@dataclass
class RunConfig:
    workdir: str = DEFAULT_WORKDIR
    sample: SampleSection = field(default_factory=SampleSection)
    data: DataSection = field(default_factory=DataSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    captions: CaptionsSection = field(default_factory=CaptionsSection)
    train: TrainSection = field(default_factory=TrainSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    runner: RunnerSection = field(default_factory=RunnerSection)
    report: bool = True

    def validate(self) -> "RunConfig":
        if not self.workdir:
            raise ConfigError("workdir: must not be empty")
        d = self.data
        if d.images and not d.captions:
            raise ConfigError("data.captions (--captions): required when data.images (--images) is given")
        if d.captions and not d.images:
            raise ConfigError("data.images (--images): required when data.captions (--captions) is given")
        if d.images:
            for split in ("train", "dev", self.evaluate.split):
                if split not in d.splits:
                    raise ConfigError(f"data.splits (--split {split}=FILE): a {split!r} split file is required "
                                      f"with your own data")
        for name, value in (("sample.images", self.sample.images), ("sample.size", self.sample.size),
                            ("features.image_size", self.features.image_size),
                            ("features.batch_size", self.features.batch_size),
                            ("train.epochs", self.train.epochs), ("train.batch_size", self.train.batch_size),
                            ("evaluate.beam_size", self.evaluate.beam_size)):
            if int(value) < 1:
                raise ConfigError(f"{name}: must be positive, got {value}")
        if self.sample.images < 20 and d.is_sample:
            raise ConfigError(f"sample.images (--sample-images): at least 20 so every split has images, "
                              f"got {self.sample.images}")
        if self.evaluate.caption_images < 0:
            raise ConfigError(f"evaluate.caption_images: must be >= 0, got {self.evaluate.caption_images}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _describe(hint) -> str:
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return " or ".join(_describe(p) if p is not type(None) else "null" for p in params)
    if origin in (list, List):
        return f"a list of {_describe(params[0]).split(' ', 1)[-1]}s" if params else "a list"
    if origin in (dict, Dict):
        return "a mapping of names to strings"
    return _TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _matches(hint, value) -> bool:
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return any(value is None if p is type(None) else _matches(p, value) for p in params)
    if origin in (list, List):
        return isinstance(value, list) and all(_matches(params[0], v) for v in value) if params else isinstance(value, list)
    if origin in (dict, Dict):
        return isinstance(value, Mapping) and all(_matches(params[0], k) and _matches(params[1], v)
                                                  for k, v in value.items())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def check_type(key: str, hint, value):
    """``value`` if it is of the field's type (an int where a float is expected becomes a float), else a
    :class:`ConfigError` naming ``key`` and the type it expects."""
    if not _matches(hint, value):
        raise ConfigError(f"{key}: expected {_describe(hint)}, got {type(value).__name__} {value!r}")
    return float(value) if hint is float else value


def _build(cls, data: Mapping[str, object], where: str):
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where + '.' if where else ''}{key}"
        if key not in known:
            raise ConfigError(f"{dotted}: unknown key; known: {', '.join(known)}")
        f = known[key]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(sub):
            kwargs[key] = _build(sub, value, dotted)
        elif key in ("images", "extra", "pipeline_args") and isinstance(value, str):
            kwargs[key] = [value]
        else:
            kwargs[key] = check_type(dotted, hints[key], value)
    return cls(**kwargs)


def from_mapping(data: Mapping[str, object]) -> RunConfig:
    return _build(RunConfig, data or {}, "")


def load(path: str) -> RunConfig:
    """Read ``run.yaml`` (local or gs://)."""
    import yaml
    if "://" in path:
        import captionbeam.pipelines.io as pio
        text = pio.read_text(path)
    else:
        try:
            with open(path, "r", encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise ConfigError(f"--config: file not found: {path}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML: {e}") from None
    return from_mapping(data)


def parse_split(text: str) -> tuple:
    """``NAME=FILE`` -> (name, file)."""
    name, eq, path = text.partition("=")
    if not eq or not name or not path:
        raise ConfigError(f"--split: expected NAME=FILE, got {text!r}")
    return name, path


def apply_overrides(config: RunConfig, overrides: Mapping[str, object]) -> RunConfig:
    """Set dotted keys (``{"train.epochs": 3}``) whose value is not None; returns ``config``."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        target = config
        *parents, leaf = dotted.split(".")
        for p in parents:
            target = getattr(target, p)
        if not hasattr(target, leaf):
            raise ConfigError(f"{dotted}: unknown setting")
        setattr(target, leaf, value)
    return config
