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

Members must have the same vocabulary (token for token) and the same image encoder (name, weights,
input size, preprocessing, feature shape, the encoder file's hash for a model-file encoder: the typed
description's ``identity()``; and the resize filter): :func:`check_compatible` refuses anything else, naming the member and what differs.
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


def check_compatible(members: Sequence[Tuple[str, object, object]]) -> None:
    """``(model_dir, Vocabulary, FeaturesSpec)`` of each member: ValueError unless all share the first
    member's vocabulary and image encoder."""
    if not members:
        raise ValueError("an ensemble needs at least one model directory")
    first_dir, first_vocab, first_spec = members[0]
    want = encoder_identity(first_spec)
    for model_dir, vocab, spec in members[1:]:
        if tuple(vocab.tokens) != tuple(first_vocab.tokens):
            diff = next((i for i, (a, b) in enumerate(zip(vocab.tokens, first_vocab.tokens)) if a != b),
                        min(len(vocab), len(first_vocab)))
            raise ValueError(f"ensemble members must share one vocabulary: {model_dir}/vocab.txt ({len(vocab)} "
                             f"tokens) differs from {first_dir}/vocab.txt ({len(first_vocab)} tokens) at id {diff}")
        got = encoder_identity(spec)
        for key in want:
            if got[key] != want[key]:
                raise ValueError(f"ensemble members must share one image encoder: {model_dir} has {key} "
                                 f"{got[key]!r}, {first_dir} has {want[key]!r} (features_spec.json)")


def write_ensemble(output: str, model_dirs: Sequence[str]) -> List[str]:
    """Check the members (config, vocabulary, features spec; not the weights) and write
    ``output/ensemble.json``; returns the member paths as written (as given)."""
    from captionbeam.model import gfile, records
    from captionbeam.model.config import ModelConfig
    from captionbeam.model.vocab import VOCAB_FILE, Vocabulary
    loaded = []
    for d in model_dirs:
        member = _resolve(output.rstrip("/"), d)
        ModelConfig.load(member)
        loaded.append((member, Vocabulary.load(gfile.join(member, VOCAB_FILE)), records.FeaturesSpec.load(member)))
    check_compatible(loaded)
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

    def __init__(self, members: Sequence[object]):
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one model")
        first = members[0].config
        for m in members[1:]:
            if int(m.config.vocab_size) != int(first.vocab_size):
                raise ValueError(f"ensemble members must share one vocabulary: {m.config.vocab_size} tokens vs "
                                 f"{first.vocab_size}")
            if [int(d) for d in m.config.feature_shape] != [int(d) for d in first.feature_shape]:
                raise ValueError(f"ensemble members must read the same features: {list(m.config.feature_shape)} "
                                 f"vs {list(first.feature_shape)}")
        self.members = members
        self.archs = [m.config.arch for m in members]
        # the longest caption any member was trained on bounds the default --max-length
        self.config = dataclasses.replace(first, max_length=max(int(m.config.max_length or 0) for m in members))
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
            for k, v in m.encode(features, training=training).items():
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
