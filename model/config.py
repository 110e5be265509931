"""Typed configs of the trainer: ``ModelConfig`` (saved as ``config.json`` in the model dir) and
``TrainConfig`` (how a run trains; saved beside it as ``train_config.json`` for the record).

``config.json`` is the contract with decoding, export and bulk captioning: with ``vocab.txt`` and
``features_spec.json`` it is everything needed to rebuild the model and feed it features.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Optional

from captionbeam.model import gfile
from captionbeam.model.encoder_description import EncoderDescription

ARCHITECTURES = ("merge", "inject", "attention", "transformer")
POSITIONS = ("learned", "sinusoidal")
OBJECTIVES = ("xent", "scst")
SELECT_BY = ("loss", "cider")
BASELINES = ("mean", "greedy")
SCST_LEARNING_RATE = 5e-5   # the default --learning-rate of --objective scst (xent: 1e-3)
STRATEGIES = ("auto", "one_device", "mirrored", "multiworker")
LR_SCHEDULES = ("constant", "cosine", "exponential")
CONFIG_FILE = "config.json"
# ModelConfig's fields before encoder_description (config.json files of older runs still load)
_LEGACY_ENCODER_FIELDS = ("encoder", "encoder_weights", "image_size", "preprocessing")
TRAIN_CONFIG_FILE = "train_config.json"


def _from_dict(cls, d: Dict[str, object]):
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ModelConfig:
    """Architecture + what it was trained on. Defaults reproduce the classic tutorial's merge model
    (256 units everywhere, dropout 0.5)."""
    arch: str = "merge"
    vocab_size: int = 0
    max_length: int = 0                  # longest caption in tokens, <start> and <end> included
    feature_shape: List[int] = field(default_factory=list)
    embedding_dim: int = 256
    units: int = 256                     # LSTM units (and image projection / decoder width)
    num_layers: int = 1                  # stacked LSTM layers
    dropout: float = 0.5
    attention_units: int = 256           # attention MLP width (attention only)
    attention_lambda: float = 1.0        # doubly-stochastic regularisation weight (attention only)
    heads: int = 4                       # attention heads (transformer only; must divide units)
    ffn_units: int = 0                   # feed-forward width (transformer only; 0 = 4 x units)
    positions: str = "learned"           # caption positions: learned or sinusoidal (transformer only)
    # from features_spec.json: how to turn an image into the features this model reads (the one typed
    # description; config.json files written before it held loose copies: encoder, encoder_weights,
    # image_size, preprocessing, read by from_json)
    encoder_description: Optional[EncoderDescription] = None
    # SHA-256 of the vocab.txt the model was trained with: loading refuses another vocabulary file
    vocab_sha256: str = ""

    def validate(self) -> "ModelConfig":
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"--arch: unknown architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.vocab_size <= 4:
            raise ValueError(f"vocabulary has {self.vocab_size} tokens: it needs more than the 4 reserved ones")
        if not self.feature_shape:
            raise ValueError("feature_shape is empty")
        if self.arch == "attention" and len(self.feature_shape) < 2:
            raise ValueError(
                f"--arch attention needs a spatial feature map (H, W, C) or (L, C); the features have shape "
                f"{tuple(self.feature_shape)} (a pooled vector). Extract features with a conv-map encoder "
                f"(e.g. `captionbeam features --encoder mobilenet-conv`), or use --arch merge / inject.")
        if self.arch != "attention" and len(self.feature_shape) != 1:
            # merge/inject read a vector; a map is mean-pooled over its locations.
            pass
        for name in ("embedding_dim", "units", "num_layers", "attention_units", "heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.ffn_units < 0:
            raise ValueError(f"--ffn-units must be >= 0, got {self.ffn_units}")
        if self.positions not in POSITIONS:
            raise ValueError(f"--positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")
        if self.arch == "transformer" and self.units % self.heads:
            raise ValueError(f"--heads {self.heads} must divide --units {self.units} (the transformer's width)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        return self

    @property
    def encoder(self) -> str:
        """The encoder's name ("" when the config names none)."""
        return self.encoder_description.name if self.encoder_description else ""

    @property
    def image_size(self) -> List[int]:
        """The encoder's input size as ``[h, w]`` (features_spec.json's layout); [] when unknown."""
        size = self.encoder_description.image_size if self.encoder_description else 0
        return [size, size] if size else []

    @property
    def locations(self) -> int:
        """Number of spatial locations L of the feature map (1 for a vector)."""
        n = 1
        for d in self.feature_shape[:-1]:
            n *= int(d)
        return n

    @property
    def channels(self) -> int:
        return int(self.feature_shape[-1])

    def to_json(self) -> str:
        d = asdict(self)
        d["encoder_description"] = self.encoder_description.to_dict() if self.encoder_description else None
        # the older layout's keys too, derived from the description (for readers of older versions and of
        # the file; from_json reads the description when it is there)
        desc = self.encoder_description
        d.update(encoder=self.encoder, encoder_weights=desc.weights if desc else "", image_size=self.image_size,
                 preprocessing=desc.preprocessing if desc else "")
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        d = dict(json.loads(text))
        legacy = {k: d.pop(k, None) for k in _LEGACY_ENCODER_FIELDS}
        described = d.pop("encoder_description", None)
        config = _from_dict(cls, d)
        if described:
            config.encoder_description = EncoderDescription.from_dict(described)
        elif legacy["encoder"]:       # a config.json written before the description: its loose copies
            config.encoder_description = EncoderDescription.from_spec_fields(
                str(legacy["encoder"]), str(legacy["encoder_weights"] or ""), legacy["image_size"] or 0,
                str(legacy["preprocessing"] or ""), feature_shape=config.feature_shape)
        return config

    def save(self, directory: str) -> None:
        gfile.write_text(gfile.join(directory, CONFIG_FILE), self.to_json())

    @classmethod
    def load(cls, directory: str) -> "ModelConfig":
        path = gfile.join(directory, CONFIG_FILE)
        text = gfile.read_text(path, missing=f"model config not found: {path} (is this a `captionbeam train` model dir?)")
        try:
            return cls.from_json(text)
        except json.JSONDecodeError as e:      # truncated or edited by hand: name the file
            raise ValueError(f"{path}: not valid JSON ({e}); the model directory's config is damaged "
                             f"(re-run `captionbeam train` or restore the file)") from None

    def architecture_fields(self) -> Dict[str, object]:
        """The fields that must match for a checkpoint to be resumable."""
        keep = ("arch", "vocab_size", "feature_shape", "embedding_dim", "units", "num_layers",
                "attention_units")
        fields_ = {k: getattr(self, k) for k in keep}
        if self.arch == "transformer":
            fields_.update(heads=self.heads, ffn_units=self.ffn_units, positions=self.positions,
                           max_positions=self.max_positions)
        return fields_

    @property
    def max_positions(self) -> int:
        """Caption positions a transformer has (position table, key-value cache): the longest training
        caption with room to spare, at least 64."""
        return max(64, int(self.max_length) + 16)


@dataclass
class TrainConfig:
    """How to train (``captionbeam train`` flags)."""
    data: str = ""
    model_dir: str = ""
    train_split: str = "train"
    val_split: str = "dev"
    epochs: int = 20
    steps_per_epoch: Optional[int] = None   # default: one pass over the training captions
    batch_size: int = 64                   # per replica; global = batch_size x replicas
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    lr_decay_rate: float = 0.5             # exponential: factor per epoch
    clip_norm: float = 5.0                 # global-norm gradient clipping over all replicas; 0 = off
    early_stopping_patience: int = 3       # epochs without val improvement; 0 = off
    min_delta: float = 0.0
    checkpoint_every: int = 500            # steps; also at every epoch end
    keep_checkpoints: int = 3
    log_every: int = 50
    shuffle_buffer: int = 10000            # examples (captions), bounded
    bucket_by_length: bool = False
    max_val_batches: Optional[int] = None
    strategy: str = "auto"
    cpu_replicas: int = 0
    mixed_precision: bool = False
    seed: int = 42
    stop_after_steps: Optional[int] = None  # debug: stop (after a checkpoint) once the global step reaches N
    objective: str = "xent"                # xent (cross-entropy) | scst (self-critical, from --init-from)
    select_by: str = ""                    # best model / early stopping: loss | cider ("" = loss; scst: cider)
    init_from: str = ""                    # scst: the trained model dir to fine-tune
    samples: int = 5                       # scst: captions sampled per image (K)
    baseline: str = "mean"                 # scst: mean (of the other K-1 samples) | greedy (the greedy caption)
    temperature: float = 1.0               # scst: sampling temperature

    @property
    def selection(self) -> str:
        """What picks the best model: ``select_by``, or its default (dev loss; dev CIDEr-D for scst)."""
        return self.select_by or ("cider" if self.objective == "scst" else "loss")

    def validate(self) -> "TrainConfig":
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        for name in ("epochs", "batch_size", "checkpoint_every", "log_every", "shuffle_buffer", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch <= 0:
            raise ValueError(f"--steps-per-epoch must be positive, got {self.steps_per_epoch}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.clip_norm < 0:
            raise ValueError(f"--clip-norm must be >= 0, got {self.clip_norm}")
        if self.cpu_replicas < 0:
            raise ValueError(f"--cpu-replicas must be >= 0, got {self.cpu_replicas}")
        if self.cpu_replicas > 1 and self.strategy not in ("auto", "mirrored"):
            raise ValueError("--cpu-replicas applies to --strategy mirrored (or auto)")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.select_by and self.select_by not in SELECT_BY:
            raise ValueError(f"--select-by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")
        if self.objective == "scst":
            if not self.init_from:
                raise ValueError("--objective scst needs --init-from MODEL_DIR: self-critical training fine-tunes "
                                 "a model trained with cross-entropy (`captionbeam train --objective xent`)")
            if self.select_by == "loss":
                raise ValueError("--select-by loss: --objective scst has no loss to select by; use --select-by "
                                 "cider (its default)")
            if self.baseline not in BASELINES:
                raise ValueError(f"--baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
            if self.samples < 1:
                raise ValueError(f"--samples must be >= 1, got {self.samples}")
            if self.baseline == "mean" and self.samples < 2:
                raise ValueError(f"--samples {self.samples}: the mean baseline (--baseline mean) averages the other "
                                 f"samples of the image, so it needs --samples 2 or more (or --baseline greedy)")
            if self.temperature <= 0:
                raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        elif self.init_from:
            raise ValueError("--init-from applies to --objective scst (cross-entropy training resumes from "
                             "--model-dir's own checkpoints)")
        if self.selection == "cider" and (not self.val_split or self.val_split.lower() == "none"):
            raise ValueError("--select-by cider needs a validation split (--val-split)")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return _from_dict(cls, json.loads(text))
