"""Warm start: a new model directory that ``captionbeam train`` starts from an old model's weights,
optionally with a vocabulary grown at the end (append only: old ids keep their rows)."""
from __future__ import annotations

import os
from typing import Optional, Sequence


class WarmStartError(ValueError):
    """The old model's weights cannot seed the new one (the message says which weight and why)."""


def grow_weights(old_model, new_model, vocab_size: int) -> list:
    """Copy every weight of ``old_model`` into ``new_model`` (same architecture, vocabulary axis possibly
    longer): equal shapes are copied, a grown vocabulary axis gets the old slice and keeps its fresh
    initialisation for the new tokens. Returns a description of each grown weight."""
    import numpy as np
    grown = []
    old_vars = {v.path: v for v in old_model.weights}
    for v in new_model.weights:
        o = old_vars.get(v.path)
        if o is None:
            raise WarmStartError(f"cannot warm-start: weight {v.path} not in the old model")
        ov, nv = np.asarray(o.numpy()), np.asarray(v.numpy())
        if ov.shape == nv.shape:
            v.assign(ov)
            continue
        axis = [i for i, (a, b) in enumerate(zip(ov.shape, nv.shape)) if a != b]
        if len(ov.shape) != len(nv.shape) or len(axis) != 1 or nv.shape[axis[0]] != vocab_size:
            raise WarmStartError(f"cannot warm-start {v.path}: {ov.shape} -> {nv.shape}")
        index = [slice(None)] * len(ov.shape)
        index[axis[0]] = slice(0, ov.shape[axis[0]])
        nv[tuple(index)] = ov
        v.assign(nv)
        grown.append(f"{v.path} {ov.shape}->{nv.shape}")
    return grown


def write_warm_start(old_model_dir: str, new_model_dir: str, vocab_tokens: Optional[Sequence[str]] = None) -> dict:
    """Prepare ``new_model_dir`` (local) so that ``captionbeam train`` starts from the old model's best
    weights: config.json (+ vocab.txt, features_spec.json) and a step-0 checkpoint with those weights
    and a fresh optimizer. With ``vocab_tokens`` longer than the old vocabulary, the embedding rows and
    output columns of the old tokens are copied and the new ones keep their fresh initialisation."""
    import keras
    from dataclasses import replace
    from captionbeam.model.architectures import build_model
    from captionbeam.model.checkpoints import Checkpointer, TrainingState
    from captionbeam.model.integrity import copy_bundled_encoder
    from captionbeam.model.model_dir import load_trained
    from captionbeam.model.vocab import Vocabulary

    old_model, old_cfg, old_vocab, spec = load_trained(old_model_dir, "best")
    tokens = list(vocab_tokens) if vocab_tokens is not None else list(old_vocab.tokens)
    if tokens[: len(old_vocab)] != list(old_vocab.tokens):
        raise WarmStartError("the new vocabulary must keep the old tokens and ids (append only)")
    new_cfg = replace(old_cfg, vocab_size=len(tokens), vocab_sha256=Vocabulary(tuple(tokens)).sha256())
    os.makedirs(new_model_dir, exist_ok=True)
    if len(tokens) == len(old_vocab):
        model, grown = old_model, []
    else:
        model = build_model(new_cfg)
        grown = grow_weights(old_model, model, len(tokens))
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    Checkpointer(new_model_dir, model, optimizer, TrainingState.create(), is_chief=True).save(0)
    new_cfg.save(new_model_dir)
    Vocabulary(tuple(tokens)).save(os.path.join(new_model_dir, "vocab.txt"))
    spec.save(new_model_dir)
    copy_bundled_encoder(spec, old_model_dir, new_model_dir)
    return {"vocab_size": len(tokens), "old_vocab_size": len(old_vocab), "grown": grown}
