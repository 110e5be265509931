"""Batched greedy decoding and batched beam search over a ``CaptionModel``'s step interface.

Both run as one TensorFlow graph: the image is encoded once (``model.encode``), the LSTM state is
carried from step to step (``model.step`` sees one token per sequence, never the prefix again), and
the loop is a ``tf.while_loop`` over time that stops as soon as every sequence has produced
``<end>`` (or at ``max_length``). Beam search vectorises images x beams: the context is tiled to
``[B*K, ...]``, the top K of the ``K*V`` candidates per image are chosen with one ``top_k`` and the
states, sequences and attention maps are reordered with ``tf.gather``.

- ``greedy_search(model, features, max_length)`` / ``beam_search(model, features, K, max_length, alpha)``
  are graph-building functions: call them inside any ``tf.function`` (the export does).
- ``Decoder`` wraps them in a traced ``tf.function`` with a fixed input signature and returns numpy.

Conventions:
- generated tokens exclude ``<start>``, include ``<end>`` when it was produced, then ``<pad>``;
- ``<pad>``, ``<start>`` and ``<unk>`` are never generated: :func:`token_mask` (the one mask every decoder,
  the export and SCST's sampling and log-probabilities use) sets their log-probabilities to ``NEG``;
- a model may define ``step_log_probs(tokens, states, context) -> (log_probs, states, attention)`` (an
  ``model.ensemble.Ensemble``: the members' mean log-probabilities); otherwise the log-probabilities are
  ``log_softmax`` of ``step``'s logits (:func:`_step_log_probs`);
- ``log_prob`` is the sum of the chosen tokens' log-probabilities, ``<end>`` included;
- beam search ranks candidates by ``log_prob / length ** alpha`` (``alpha`` = 0: raw log-probability,
  1: mean per token; length counts ``<end>``). A finished beam stays in the beam with a constant score;
  the result is the best of the K final beams (``finished`` False when ``max_length`` cut it off).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from captionbeam.model.vocab import END_ID, PAD_ID, START_ID, UNK_ID, Vocabulary

NEG = -1e9   # "impossible" log-probability: stays finite (no inf - inf NaNs)


NEVER_GENERATED = (PAD_ID, START_ID, UNK_ID)   # tokens no caption ever contains


def token_mask(vocab_size: int) -> tf.Tensor:
    """[V] added to every step's log-probabilities (or logits): ``NEG`` for :data:`NEVER_GENERATED`, else 0."""
    m = np.zeros([vocab_size], np.float32)
    m[list(NEVER_GENERATED)] = NEG
    return tf.constant(m)


def _batch_size(context: Dict[str, tf.Tensor]) -> tf.Tensor:
    return tf.shape(next(iter(context.values())))[0]


def _step_log_probs(model, tokens, states, context, mask):
    """One step of ``model`` -> (masked log-probabilities [B, V] float32, new states, attention or None)."""
    own = getattr(model, "step_log_probs", None)
    if own is not None:
        lp, new_states, attention = own(tokens, list(states), context)
    else:
        logits, new_states, attention = model.step(tokens, list(states), context)
        lp = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    return lp + mask, new_states, attention


def greedy_search(model, features, max_length: int) -> Dict[str, tf.Tensor]:
    """Batched greedy decoding. -> tokens [B, T] int32 (T <= max_length), log_prob [B], length [B]
    (tokens up to and including ``<end>``), finished [B] bool, attention [B, T, L] (attention models)."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    context = model.encode(features, training=False)
    states = list(model.initial_state(context))
    batch = _batch_size(context)
    mask = token_mask(model.config.vocab_size)
    with_attention = bool(model.has_attention)
    locations = model.locations

    def cond(t, tokens, states, finished, log_prob, length, ta_tokens, ta_att):
        return tf.logical_and(t < max_length, tf.logical_not(tf.reduce_all(finished)))

    def body(t, tokens, states, finished, log_prob, length, ta_tokens, ta_att):
        lp, new_states, attention = _step_log_probs(model, tokens, states, context, mask)
        nxt = tf.argmax(lp, axis=-1, output_type=tf.int32)
        step_lp = tf.gather(lp, nxt, batch_dims=1)
        nxt = tf.where(finished, PAD_ID, nxt)
        log_prob = log_prob + tf.where(finished, 0.0, step_lp)
        length = length + tf.cast(tf.logical_not(finished), tf.int32)
        ta_tokens = ta_tokens.write(t, nxt)
        if with_attention:
            att = tf.where(finished[:, None], 0.0, tf.cast(attention, tf.float32))
            ta_att = ta_att.write(t, att)
        finished = tf.logical_or(finished, tf.equal(nxt, END_ID))
        return t + 1, nxt, new_states, finished, log_prob, length, ta_tokens, ta_att

    loop_vars = (
        tf.constant(0), tf.fill([batch], tf.constant(START_ID, tf.int32)), states,
        tf.zeros([batch], tf.bool), tf.zeros([batch], tf.float32), tf.zeros([batch], tf.int32),
        tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[None]),
        tf.TensorArray(tf.float32, size=0, dynamic_size=True, element_shape=[None, locations]),
    )
    t, _, _, finished, log_prob, length, ta_tokens, ta_att = tf.while_loop(
        cond, body, loop_vars, maximum_iterations=max_length)
    tokens = tf.reshape(tf.transpose(ta_tokens.stack(), [1, 0]), [batch, t])
    out = {"tokens": tokens, "log_prob": log_prob, "length": length, "finished": finished,
           "score": log_prob}
    if with_attention:
        out["attention"] = tf.reshape(tf.transpose(ta_att.stack(), [1, 0, 2]), [batch, t, locations])
    return out


def sample_search(model, features, max_length: int, seed, temperature: float = 1.0) -> Dict[str, tf.Tensor]:
    """Batched multinomial sampling (self-critical training): each step draws the next token from
    ``softmax(logits / temperature)`` (``<pad>``/``<start>`` masked) with ``tf.random.stateless_categorical``
    seeded by ``seed`` ([2] int, folded with the step: the same seed gives the same captions).
    -> tokens [B, T] int32 (T <= max_length, ``<end>`` included when drawn, then ``<pad>``), length [B],
    finished [B]. Graph-building; call inside a tf.function."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if temperature <= 0:
        raise ValueError(f"--temperature must be > 0, got {temperature}")
    context = model.encode(features, training=False)
    states = list(model.initial_state(context))
    batch = _batch_size(context)
    mask = token_mask(model.config.vocab_size)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)

    def cond(t, tokens, states, finished, length, ta_tokens):
        return tf.logical_and(t < max_length, tf.logical_not(tf.reduce_all(finished)))

    def body(t, tokens, states, finished, length, ta_tokens):
        logits, new_states, _ = model.step(tokens, list(states), context)
        scaled = tf.cast(logits, tf.float32) / temperature + mask
        step_seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(t, tf.int64))
        nxt = tf.cast(tf.random.stateless_categorical(scaled, 1, step_seed)[:, 0], tf.int32)
        nxt = tf.where(finished, PAD_ID, nxt)
        length = length + tf.cast(tf.logical_not(finished), tf.int32)
        ta_tokens = ta_tokens.write(t, nxt)
        finished = tf.logical_or(finished, tf.equal(nxt, END_ID))
        return t + 1, nxt, new_states, finished, length, ta_tokens

    loop_vars = (tf.constant(0), tf.fill([batch], tf.constant(START_ID, tf.int32)), states,
                 tf.zeros([batch], tf.bool), tf.zeros([batch], tf.int32),
                 tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[None]))
    t, _, _, finished, length, ta_tokens = tf.while_loop(cond, body, loop_vars, maximum_iterations=max_length)
    tokens = tf.reshape(tf.transpose(ta_tokens.stack(), [1, 0]), [batch, t])
    return {"tokens": tokens, "length": length, "finished": finished}


def _length_penalty(length, alpha: float):
    if alpha == 0.0:
        return tf.ones_like(tf.cast(length, tf.float32))
    return tf.pow(tf.maximum(tf.cast(length, tf.float32), 1.0), alpha)


def beam_search(model, features, beam_size: int, max_length: int, alpha: float = 0.0) -> Dict[str, tf.Tensor]:
    """Batched beam search (images x beams vectorised). Returns the best beam per image with the same
    keys as :func:`greedy_search`, plus ``beam_tokens`` [B, K, T], ``beam_log_prob`` [B, K],
    ``beam_score`` [B, K] (all final beams, best first)."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    K, T = int(beam_size), int(max_length)
    V = int(model.config.vocab_size)
    context = model.encode(features, training=False)
    B = _batch_size(context)
    tiled = {k: tf.repeat(v, K, axis=0) for k, v in context.items()}            # [B*K, ...]
    states = list(model.initial_state(tiled))
    mask = token_mask(V)
    finished_row = tf.one_hot(PAD_ID, V, on_value=0.0, off_value=NEG)          # a finished beam only pads
    with_attention = bool(model.has_attention)
    L = int(model.locations)
    offsets = tf.range(B)[:, None] * K                                           # [B, 1]
    time_onehot = tf.one_hot(tf.range(T), T, dtype=tf.int32)                    # [T, T]

    def cond(t, tokens, states, beam_lp, finished, lengths, seqs, atts):
        return tf.logical_and(t < T, tf.logical_not(tf.reduce_all(finished)))

    def body(t, tokens, states, beam_lp, finished, lengths, seqs, atts):
        lp, new_states, attention = _step_log_probs(model, tokens, states, tiled, mask)
        lp = tf.reshape(lp, [B, K, V])
        lp = tf.where(finished[:, :, None], finished_row[None, None, :], lp)
        cand_lp = beam_lp[:, :, None] + lp                                        # [B, K, V]
        cand_len = lengths + tf.cast(tf.logical_not(finished), tf.int32)          # [B, K]
        cand_score = cand_lp / _length_penalty(cand_len, alpha)[:, :, None]
        _, idx = tf.math.top_k(tf.reshape(cand_score, [B, K * V]), k=K)           # [B, K]
        parent = idx // V
        token = idx % V
        beam_lp = tf.gather(tf.reshape(cand_lp, [B, K * V]), idx, batch_dims=1)
        parent_finished = tf.gather(finished, parent, batch_dims=1)
        lengths = tf.gather(cand_len, parent, batch_dims=1)
        token = tf.where(parent_finished, PAD_ID, token)
        finished = tf.logical_or(parent_finished, tf.equal(token, END_ID))
        seqs = tf.gather(seqs, parent, batch_dims=1) + time_onehot[t][None, None, :] * token[:, :, None]
        flat_parent = tf.reshape(parent + offsets, [-1])                          # [B*K]
        new_states = [tf.gather(s, flat_parent) for s in new_states]
        if with_attention:
            att = tf.gather(tf.reshape(tf.cast(attention, tf.float32), [B, K, L]), parent, batch_dims=1)
            att = tf.where(parent_finished[:, :, None], 0.0, att)
            step = tf.cast(time_onehot[t], tf.float32)[None, None, :, None]
            atts = tf.gather(atts, parent, batch_dims=1) + step * att[:, :, None, :]
        return t + 1, tf.reshape(token, [-1]), new_states, beam_lp, finished, lengths, seqs, atts

    init_lp = tf.tile(tf.constant([[0.0] + [NEG] * (K - 1)], tf.float32), [B, 1])
    atts0 = tf.zeros([B, K, T, L] if with_attention else [B, K, 0, 0], tf.float32)
    loop_vars = (tf.constant(0), tf.fill([B * K], tf.constant(START_ID, tf.int32)), states, init_lp,
                 tf.zeros([B, K], tf.bool), tf.zeros([B, K], tf.int32), tf.zeros([B, K, T], tf.int32), atts0)
    t, _, _, beam_lp, finished, lengths, seqs, atts = tf.while_loop(cond, body, loop_vars, maximum_iterations=T)
    score = beam_lp / _length_penalty(lengths, alpha)
    order = tf.argsort(score, axis=-1, direction="DESCENDING", stable=True)     # [B, K], best first
    seqs = tf.gather(seqs, order, batch_dims=1)[:, :, :t]
    beam_lp = tf.gather(beam_lp, order, batch_dims=1)
    score = tf.gather(score, order, batch_dims=1)
    lengths = tf.gather(lengths, order, batch_dims=1)
    finished = tf.gather(finished, order, batch_dims=1)
    out = {"tokens": seqs[:, 0], "log_prob": beam_lp[:, 0], "score": score[:, 0], "length": lengths[:, 0],
           "finished": finished[:, 0], "beam_tokens": seqs, "beam_log_prob": beam_lp, "beam_score": score}
    if with_attention:
        out["attention"] = tf.gather(atts, order[:, 0], batch_dims=1)[:, :t]
    return out


def decode_graph(model, features, beam_size: int, max_length: int, alpha: float = 0.0) -> Dict[str, tf.Tensor]:
    """Greedy for ``beam_size`` 1, beam search otherwise (graph-building; call inside a tf.function)."""
    if beam_size == 1:
        return greedy_search(model, features, max_length)
    return beam_search(model, features, beam_size, max_length, alpha)


def tokens_to_strings(tokens, vocab_tokens: Sequence[str]) -> tf.Tensor:
    """Graph op: token ids [B, T] -> captions [B] (words joined by spaces, stopping at ``<end>``/``<pad>``)."""
    table = tf.constant(list(vocab_tokens))
    tokens = tf.convert_to_tensor(tokens, tf.int32)
    stop = tf.logical_or(tf.equal(tokens, END_ID), tf.equal(tokens, PAD_ID))
    keep = tf.equal(tf.cumsum(tf.cast(stop, tf.int32), axis=1), 0)
    words = tf.ragged.boolean_mask(tf.gather(table, tf.clip_by_value(tokens, 0, len(vocab_tokens) - 1)), keep)
    return tf.strings.reduce_join(words, axis=1, separator=" ")


# ----------------------------------------------------------------------------- eager-friendly wrapper
@dataclass
class DecodeResult:
    """numpy outputs for a batch: see :func:`greedy_search` / :func:`beam_search`."""
    tokens: np.ndarray               # [B, T] int32
    log_prob: np.ndarray             # [B]
    score: np.ndarray                # [B] (log_prob / length**alpha for beam search)
    length: np.ndarray               # [B] generated tokens, <end> included
    finished: np.ndarray             # [B] bool
    attention: Optional[np.ndarray] = None   # [B, T, L]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def words(self, vocab: Vocabulary) -> List[List[str]]:
        return [vocab.decode(row) for row in self.tokens]

    def captions(self, vocab: Vocabulary) -> List[str]:
        return [" ".join(w) for w in self.words(vocab)]


class Decoder:
    """A compiled decoder for one model: ``Decoder(model, max_length, beam_size, alpha)(features)``.

    One ``tf.function`` per decoder with input signature ``[None, *feature_shape]``: any batch size
    reuses the same graph.
    """

    def __init__(self, model, max_length: Optional[int] = None, beam_size: int = 1, alpha: float = 0.0):
        if beam_size < 1:
            raise ValueError(f"--beam-size must be >= 1, got {beam_size}")
        if max_length is None:
            max_length = default_max_length(model.config)
        if max_length < 1:
            raise ValueError(f"--max-length must be >= 1, got {max_length}")
        limit = getattr(model, "max_positions", None)     # a transformer's position table / key-value cache
        if limit is not None and max_length > limit:
            raise ValueError(f"--max-length {max_length}: this {model.config.arch} model has {limit} positions; "
                             f"use --max-length {limit} or less")
        if alpha < 0:
            raise ValueError(f"--length-penalty must be >= 0, got {alpha}")
        self.model = model
        self.max_length = int(max_length)
        self.beam_size = int(beam_size)
        self.alpha = float(alpha)
        shape = [None] + [int(d) for d in model.config.feature_shape]
        self._fn = tf.function(self._graph, input_signature=[tf.TensorSpec(shape, tf.float32)])

    def _graph(self, features):
        out = decode_graph(self.model, features, self.beam_size, self.max_length, self.alpha)
        keep = ("tokens", "log_prob", "score", "length", "finished", "attention")
        return {k: v for k, v in out.items() if k in keep}

    def __call__(self, features: np.ndarray) -> DecodeResult:
        out = self._fn(tf.convert_to_tensor(np.asarray(features, np.float32)))
        att = out.get("attention")
        return DecodeResult(tokens=out["tokens"].numpy(), log_prob=out["log_prob"].numpy(),
                            score=out["score"].numpy(), length=out["length"].numpy(),
                            finished=out["finished"].numpy(), attention=None if att is None else att.numpy())


def default_max_length(config) -> int:
    """Generated tokens allowed: the longest training caption (``config.max_length`` counts ``<start>``
    and ``<end>``), so ``max_length - 1``; 40 when the config does not say."""
    n = int(getattr(config, "max_length", 0) or 0)
    return n - 1 if n > 1 else 40
