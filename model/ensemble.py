"""Ensembles: N trained caption models that share a vocabulary and an image encoder, decoded as one.

An ensemble is a directory holding ``ensemble.json``::

    {"members": ["../merge-a", "/models/merge-b", "gs://bucket/models/attention"]}

(member model directories, relative to the ensemble directory or absolute; local or ``gs://``). Every
command that takes ``--model-dir`` (``evaluate``, ``caption``, ``bulk``, ``export``) accepts such a
directory: ``Captioner.load`` sees ``ensemble.json`` and loads the members. ``write_ensemble`` (and
``captionbeam ensemble``) checks the members and writes the file.

:class:`Ensemble` has the decoders' model interface (``encode``, ``initial_state``, ``step``, ``config``,
``has_attention``, ``locations``, ``max_positions``) plus ``step_log_probs``: the mean over the members
of their log-softmax at each step, which ``model.decode`` uses instead of ``log_softmax(logits)``
(greedy and beam search rank by the averaged log-probabilities). The members' image contexts and states
are kept side by side (context keys ``"<i>/<key>"``, states concatenated), so beam search reorders them
like a single model's. An ensemble of one decodes exactly like its member alone.

Members must have the same vocabulary (token for token) and either the same image encoder (name, weights,
input size, preprocessing, feature shape, the encoder file's hash for a model-file encoder: the typed
description's ``identity()``; and the resize filter), or, **across encoders**, registered encoders that join
into one composite encoder (``model.encoders``: e.g. members on ``mobilenet-conv`` and on
``mobilenet_v2-conv`` -> ``mobilenet-conv+mobilenet_v2-conv``, 7x7x2304 at 224 px): same weights, input
size and resize filter, maps of one grid. The ensemble then reads the composite's features (evaluate:
``--data`` made with ``captionbeam features --encoder mobilenet-conv+mobilenet_v2-conv``; caption, bulk and
the export run the composite on each image) and each member its own channel slice. :func:`check_compatible`
refuses anything else, naming the member and what differs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Dict, List, Optional, Sequence, Tuple

ENSEMBLE_FILE = "ensemble.json"


# ----------------------------------------------------------------------------- the description file
def _resolve(base: str, member: str) -> str:
    if "://" in member or member.startswith("/"):
        return member.rstrip("/")
    import posixpath
    if "://" in base:
        return posixpath.normpath(f"{base.rstrip('/')}/{member}").replace(":/", "://", 1)
    import os
    return os.path.normpath(os.path.join(base, member))


def parse_ensemble(text: str, path: str) -> List[str]:
    """``ensemble.json`` text -> member entries as written (pure; ValueError naming ``path``)."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    members = d.get("members") if isinstance(d, dict) else None
    if not isinstance(members, list) or not members or not all(isinstance(m, str) and m for m in members):
        raise ValueError(f"{path}: expected {{\"members\": [\"<model dir>\", ...]}} with at least one model "
                         f"directory")
    return list(members)


def ensemble_members(model_dir: str) -> Optional[List[str]]:
    """The member model directories of an ensemble directory (resolved), or None for a plain model dir."""
    from captionbeam.model import gfile
    path = gfile.join(model_dir, ENSEMBLE_FILE)
    text = gfile.read_text(path)
    if text is None:
        return None
    return [_resolve(model_dir.rstrip("/"), m) for m in parse_ensemble(text, path)]


# ----------------------------------------------------------------------------- compatibility
def encoder_identity(spec) -> Dict[str, object]:
    """What must agree between members for one image encoder to serve them all."""
    names = ("encoder", "kind", "weights", "image size", "preprocessing mode", "feature shape", "input dtype",
             "family", "output", "layer", "encoder file sha256")
    identity = dict(zip(names, spec.encoder_description().identity()))
    identity["resize method"] = spec.resize_method or "bilinear"     # "" in features_spec.json means bilinear
    return identity


@dataclasses.dataclass(frozen=True)
class EnsembleInput:
    """What an ensemble reads: ``spec`` (the features spec of its image encoder: the members' shared one, or
    the composite of their encoders) and, across encoders, ``slices``: member i reads ``features[..., a:b]``
    (None: every member reads all of it)."""
    spec: object
    slices: Optional[Tuple[Tuple[int, int], ...]] = None

    @property
    def across_encoders(self) -> bool:
        return self.slices is not None


def _joined_input(members: Sequence[Tuple[str, object, object]]) -> EnsembleInput:
    """Members over different registered encoders -> one composite encoder (``model.encoders``: the encoders
    on the same pixels, outputs concatenated in first-seen order) and each member's channel slice of it."""
    from captionbeam.model import records
    from captionbeam.model.encoders import EncoderConfig, EncoderError, composite_name, config_of, describe
    first_dir, _, first_spec = members[0]

    def refuse(model_dir, why):
        raise ValueError(f"ensemble members must share one image encoder, or read registered encoders that can be "
                         f"joined into one (same weights, input size and resize filter; maps of one grid): "
                         f"{model_dir} {why}")

    order, shapes, slices = [], {}, []
    for model_dir, _, spec in members:
        d = spec.encoder_description()
        if d.kind != "keras.applications" or d.family == "composite":
            refuse(model_dir, f"has encoder {d.name!r} ({d.kind}{', a composite' if d.family == 'composite' else ''})")
        try:
            if config_of(d).preprocessing is not None:
                refuse(model_dir, f"has encoder {d.name!r} with --preprocessing {d.preprocessing_mode}")
        except EncoderError as e:
            refuse(model_dir, f"has encoder {d.name!r}: {e}")
        for key, got, want in (("weights", spec.weights, first_spec.weights),
                               ("image size", list(spec.image_size), list(first_spec.image_size)),
                               ("resize method", spec.resize_method or "bilinear",
                                first_spec.resize_method or "bilinear")):
            if got != want:
                refuse(model_dir, f"has {key} {got!r}, {first_dir} has {want!r} (features_spec.json)")
        shape = tuple(int(x) for x in spec.feature_shape)
        if d.name not in shapes:
            order.append(d.name)
            shapes[d.name] = shape
        elif shapes[d.name] != shape:
            refuse(model_dir, f"reads {d.name} features of shape {shape}, another member {shapes[d.name]}")
    grids = {shapes[n][:-1] for n in order}
    if len(grids) != 1:
        refuse(members[-1][0], "reads features of another grid: " + ", ".join(f"{n} {shapes[n]}" for n in order))
    offsets, start = {}, 0
    for n in order:
        offsets[n] = (start, start + shapes[n][-1])
        start += shapes[n][-1]
    for _, _, spec in members:
        slices.append(offsets[spec.encoder_description().name])
    name = composite_name(order)
    feature_shape = list(next(iter(grids))) + [start]
    size = int(first_spec.image_size[0])
    try:
        description = describe(EncoderConfig(name, first_spec.weights, size)).with_feature_shape(feature_shape)
    except EncoderError as e:
        refuse(members[-1][0], f"cannot be joined: {e}")
    spec = records.FeaturesSpec(encoder=name, feature_shape=feature_shape, image_size=list(first_spec.image_size),
                                preprocessing=description.preprocessing, weights=first_spec.weights,
                                encoder_spec=description, resize_method=first_spec.resize_method)
    return EnsembleInput(spec=spec, slices=tuple(slices))


def check_compatible(members: Sequence[Tuple[str, object, object]]) -> EnsembleInput:
    """``(model_dir, Vocabulary, FeaturesSpec)`` of each member -> what the ensemble reads. ValueError unless all
    share the first member's vocabulary, and either one image encoder or registered encoders that join into
    one composite encoder (an ensemble across encoders: each member reads its encoder's slice)."""
    if not members:
        raise ValueError("an ensemble needs at least one model directory")
    first_dir, first_vocab, first_spec = members[0]
    for model_dir, vocab, spec in members[1:]:
        if tuple(vocab.tokens) != tuple(first_vocab.tokens):
            diff = next((i for i, (a, b) in enumerate(zip(vocab.tokens, first_vocab.tokens)) if a != b),
                        min(len(vocab), len(first_vocab)))
            raise ValueError(f"ensemble members must share one vocabulary: {model_dir}/vocab.txt ({len(vocab)} "
                             f"tokens) differs from {first_dir}/vocab.txt ({len(first_vocab)} tokens) at id {diff}")
    want = encoder_identity(first_spec)
    if all(encoder_identity(spec) == want for _, _, spec in members[1:]):
        return EnsembleInput(spec=first_spec)
    if len({spec.encoder_description().name for _, _, spec in members}) == 1:
        # one encoder, set up differently: name what differs
        for model_dir, _, spec in members[1:]:
            got = encoder_identity(spec)
            for key in want:
                if got[key] != want[key]:
                    raise ValueError(f"ensemble members must share one image encoder: {model_dir} has {key} "
                                     f"{got[key]!r}, {first_dir} has {want[key]!r} (features_spec.json)")
    return _joined_input(members)


def ensemble_input(output: str, model_dirs: Sequence[str]) -> EnsembleInput:
    """Load the members' config, vocabulary and features spec (not the weights; paths relative to ``output``)
    and check them: what the ensemble reads (:func:`check_compatible`)."""
    from captionbeam.model import gfile, records
    from captionbeam.model.config import ModelConfig
    from captionbeam.model.vocab import VOCAB_FILE, Vocabulary
    loaded = []
    for d in model_dirs:
        member = _resolve(output.rstrip("/"), d)
        ModelConfig.load(member)
        loaded.append((member, Vocabulary.load(gfile.join(member, VOCAB_FILE)), records.FeaturesSpec.load(member)))
    return check_compatible(loaded)


def write_ensemble(output: str, model_dirs: Sequence[str]) -> List[str]:
    """Check the members (:func:`ensemble_input`) and write ``output/ensemble.json``; returns the member paths as
    written (as given)."""
    from captionbeam.model import gfile
    ensemble_input(output, model_dirs)
    import tensorflow as tf
    tf.io.gfile.makedirs(output)
    gfile.write_text(gfile.join(output, ENSEMBLE_FILE), json.dumps({"members": list(model_dirs)}, indent=2) + "\n")
    return list(model_dirs)


def ensemble_version(versions: Sequence[str]) -> str:
    """Stable id of an ensemble from its members' model versions (one member: that member's version)."""
    if len(versions) == 1:
        return versions[0]
    h = hashlib.sha256(b"ensemble\0" + "\0".join(versions).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- the model
class Ensemble:
    """N ``CaptionModel``s over one vocabulary and one feature shape, decoded by averaged log-probs."""

    def __init__(self, members: Sequence[object], slices: Optional[Sequence[Tuple[int, int]]] = None,
                 feature_shape: Optional[Sequence[int]] = None):
        """``slices`` (across encoders, with the joined ``feature_shape``): member i reads
        ``features[..., a:b]`` of the composite encoder's features (:class:`EnsembleInput`)."""
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one model")
        first = members[0].config
        if slices is not None and (feature_shape is None or len(slices) != len(members)):
            raise ValueError("an ensemble across encoders needs one slice per member and the joined feature shape")
        for i, m in enumerate(members):
            if int(m.config.vocab_size) != int(first.vocab_size):
                raise ValueError(f"ensemble members must share one vocabulary: {m.config.vocab_size} tokens vs "
                                 f"{first.vocab_size}")
            own = [int(d) for d in m.config.feature_shape]
            if slices is None:
                want = [int(d) for d in first.feature_shape]
            else:
                a, b = slices[i]
                want = [int(d) for d in feature_shape[:-1]] + [int(b) - int(a)]
            if own != want:
                raise ValueError(f"ensemble members must read the same features: {own} vs {want}")
        self.members = members
        self.slices = None if slices is None else [(int(a), int(b)) for a, b in slices]
        self.archs = [m.config.arch for m in members]
        # the longest caption any member was trained on bounds the default --max-length
        shape = list(first.feature_shape) if feature_shape is None else [int(d) for d in feature_shape]
        self.config = dataclasses.replace(first, max_length=max(int(m.config.max_length or 0) for m in members),
                                          feature_shape=shape)
        locations = {int(m.locations) for m in members}
        self.has_attention = all(bool(m.has_attention) for m in members) and len(locations) == 1
        self.locations = int(members[0].locations)
        limits = [int(m.max_positions) for m in members if getattr(m, "max_positions", None) is not None]
        self.max_positions = min(limits) if limits else None
        self._state_counts: Optional[List[int]] = None

    def __len__(self) -> int:
        return len(self.members)

    @property
    def variables(self) -> list:
        return [v for m in self.members for v in m.variables]

    def encode(self, features, training=False) -> Dict[str, object]:
        context = {}
        for i, m in enumerate(self.members):
            own = features if self.slices is None else features[..., self.slices[i][0]:self.slices[i][1]]
            for k, v in m.encode(own, training=training).items():
                context[f"{i}/{k}"] = v
        return context

    def _member_context(self, context, i: int):
        prefix = f"{i}/"
        return {k[len(prefix):]: v for k, v in context.items() if k.startswith(prefix)}

    def initial_state(self, context) -> list:
        states, counts = [], []
        for i, m in enumerate(self.members):
            s = list(m.initial_state(self._member_context(context, i)))
            counts.append(len(s))
            states += s
        self._state_counts = counts
        return states

    def step_log_probs(self, tokens, states, context):
        """One decoding step: -> (mean of the members' log-softmax [B, V] float32, new states, attention)."""
        import tensorflow as tf
        if self._state_counts is None:
            raise RuntimeError("Ensemble.step before initial_state")
        log_probs, new_states, attentions, start = [], [], [], 0
        for i, (m, n) in enumerate(zip(self.members, self._state_counts)):
            logits, s, att = m.step(tokens, list(states[start:start + n]), self._member_context(context, i))
            start += n
            log_probs.append(tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1))
            new_states += list(s)
            if self.has_attention:
                attentions.append(tf.cast(att, tf.float32))
        mean = tf.add_n(log_probs) / float(len(log_probs))
        attention = tf.add_n(attentions) / float(len(attentions)) if self.has_attention else None
        return mean, new_states, attention

    def step(self, tokens, states, context):
        """Like ``CaptionModel.step``; the "logits" are the averaged log-probabilities (a valid set of logits:
        softmax of them is the renormalised geometric mean of the members' distributions)."""
        return self.step_log_probs(tokens, states, context)
