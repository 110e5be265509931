"""Captioning architectures: ``merge`` (the classic tutorial / Tanti et al.), ``inject`` (Show and
Tell), ``attention`` (Show, Attend and Tell, soft attention) and ``transformer`` (a decoder-only
Transformer with cross-attention over the image regions), each one ``CaptionModel``.

The interface (stable; decoding, export and bulk captioning build on it)
-----------------------------------------------------------------------
Every model is a ``keras.Model`` built from a ``ModelConfig`` by ``build_model(config)``; its
weights exist as soon as it is constructed (no dummy call needed before ``load_weights``).

Teacher forcing (training, scoring)::

    logits = model((features, tokens), training=False)        # [B, T, V] float32
    logits, attention = model.forward(features, tokens)        # attention [B, T, L] or None

``features`` is ``[B, *feature_shape]`` float32 (a vector ``[B, C]``, or a map ``[B, H, W, C]`` /
``[B, L, C]``; merge and inject mean-pool a map over its locations), ``tokens`` ``[B, T]`` int32
token ids starting with ``<start>`` (``<pad>``=0 at the end is masked). ``logits[:, t]`` predicts
``tokens[:, t + 1]``.

Step by step (greedy / beam search; carry LSTM state one token at a time inside ``tf.function``)::

    context = model.encode(features)                           # once per image: dict of [B, ...] tensors
    states = model.initial_state(context)                      # list of [B, ...] tensors ([h, c] per LSTM layer;
                                                               # the transformer's key-value cache + position)
    logits, states, attention = model.step(tokens, states, context)
    # tokens [B] int32 -> logits [B, V] float32, new states (same structure), attention [B, L] or None

``step`` uses the same layers and weights as the teacher-forced call: running it token by token from
``initial_state`` reproduces ``model((features, tokens))`` to float precision (tested). Every tensor
in ``context`` and ``states`` has the batch as its first dimension, so a beam search can tile them
with ``tf.repeat(x, beam, axis=0)`` (or ``tf.nest.map_structure``) and reorder them with ``tf.gather``.
``step`` runs in inference mode (no dropout). ``model.has_attention`` says whether ``step`` returns
attention weights (``model.locations`` is L; for plotting reshape to the feature map's H×W).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import keras
import tensorflow as tf

from captionbeam.model.config import ModelConfig
from captionbeam.model.vocab import PAD_ID

ImageContext = Dict[str, tf.Tensor]
States = List[tf.Tensor]


class CaptionModel(keras.Model):
    """Base class: the shared embedding, LSTM stack, output layer and the documented interface."""

    has_attention = False

    def __init__(self, config: ModelConfig, dtype_policy: Optional[str] = None, **kwargs):
        super().__init__(name=f"captioner_{config.arch}", **kwargs)
        self.config = config
        self._policy = dtype_policy
        self.locations = config.locations
        self.embedding = keras.layers.Embedding(config.vocab_size, config.embedding_dim, name="embedding",
                                                dtype=dtype_policy)
        self.embedding_dropout = keras.layers.Dropout(config.dropout, name="embedding_dropout")
        # float32 logits even under mixed precision (stable softmax / loss).
        self.logits_layer = keras.layers.Dense(config.vocab_size, name="logits", dtype="float32")
        self.embedding.build((None, None))

    # ------------------------------------------------------------------ helpers
    def _dense(self, units, name, activation=None, use_bias=True, input_dim=None):
        layer = keras.layers.Dense(units, activation=activation, use_bias=use_bias, name=name, dtype=self._policy)
        if input_dim is not None:
            layer.build((None, input_dim))
        return layer

    def _lstm_stack(self, input_dim: int) -> List[keras.layers.LSTM]:
        layers = []
        for i in range(self.config.num_layers):
            lstm = keras.layers.LSTM(self.config.units, return_sequences=True, return_state=True,
                                     name=f"lstm_{i}", dtype=self._policy)
            lstm.build((None, None, input_dim if i == 0 else self.config.units))
            layers.append(lstm)
        return layers

    def _pooled(self, features):
        """Vector features [B, C] (a map is mean-pooled over its locations)."""
        features = tf.convert_to_tensor(features, tf.float32)
        if len(self.config.feature_shape) > 1:
            features = tf.reshape(features, [-1, self.config.locations, self.config.channels])
            features = tf.reduce_mean(features, axis=1)
        return features

    def _run_stack(self, x, mask, initial: Optional[States]):
        """Teacher-forced pass through the LSTM stack: -> [B, T, units]."""
        for i, lstm in enumerate(self.lstms):
            init = None if initial is None else initial[2 * i: 2 * i + 2]
            x, _, _ = lstm(x, mask=mask, initial_state=init)
        return x

    def _step_stack(self, x, states: States) -> Tuple[tf.Tensor, States]:
        """One token through the LSTM stack using the same cells (weights) as ``_run_stack``."""
        new_states: States = []
        for i, lstm in enumerate(self.lstms):
            x, (h, c) = lstm.cell(x, [states[2 * i], states[2 * i + 1]], training=False)
            new_states += [h, c]
        return x, new_states

    def _zero_states(self, batch) -> States:
        dtype = self.lstms[0].cell.compute_dtype
        return [tf.zeros([batch, self.config.units], dtype) for _ in range(2 * self.config.num_layers)]

    # ------------------------------------------------------------------ interface
    def call(self, inputs, training=False):
        features, tokens = inputs
        logits, _ = self.forward(features, tokens, training=training)
        return logits

    def forward(self, features, tokens, training=False) -> Tuple[tf.Tensor, Optional[tf.Tensor]]:
        raise NotImplementedError

    def encode(self, features, training=False) -> ImageContext:
        raise NotImplementedError

    def initial_state(self, context: ImageContext) -> States:
        raise NotImplementedError

    def step(self, tokens, states: States, context: ImageContext):
        raise NotImplementedError

    def attention_penalty(self, attention, mask) -> tf.Tensor:
        """Doubly-stochastic regularisation (attention only; 0 otherwise), summed over the batch."""
        return tf.constant(0.0, tf.float32)

    def dummy_inputs(self, batch: int = 1, length: int = 3):
        features = tf.zeros([batch] + list(self.config.feature_shape), tf.float32)
        tokens = tf.fill([batch, length], 2)
        return features, tokens


class MergeModel(CaptionModel):
    """The classic tutorial's merge model (Tanti et al.): the LSTM sees only the words; the image
    projection is added to its outputs, then Dense(relu) and the vocabulary softmax."""

    def __init__(self, config: ModelConfig, dtype_policy=None, **kwargs):
        super().__init__(config, dtype_policy, **kwargs)
        c = config
        self.image_dropout = keras.layers.Dropout(c.dropout, name="image_dropout")
        self.image_dense = self._dense(c.units, "image_dense", "relu", input_dim=c.channels)
        self.lstms = self._lstm_stack(c.embedding_dim)
        self.decoder_dense = self._dense(c.units, "decoder_dense", "relu", input_dim=c.units)
        self.logits_layer.build((None, c.units))

    def encode(self, features, training=False) -> ImageContext:
        image = self.image_dense(self.image_dropout(self._pooled(features), training=training))
        return {"image": image}

    def initial_state(self, context):
        return self._zero_states(tf.shape(context["image"])[0])

    def forward(self, features, tokens, training=False):
        tokens = tf.convert_to_tensor(tokens, tf.int32)
        mask = tf.not_equal(tokens, PAD_ID)
        image = self.encode(features, training=training)["image"]
        x = self.embedding_dropout(self.embedding(tokens), training=training)
        seq = self._run_stack(x, mask, None)
        merged = seq + tf.cast(image, seq.dtype)[:, None, :]
        return self.logits_layer(self.decoder_dense(merged)), None

    def step(self, tokens, states, context):
        x = self.embedding(tf.convert_to_tensor(tokens, tf.int32))
        h, states = self._step_stack(x, states)
        merged = h + tf.cast(context["image"], h.dtype)
        return self.logits_layer(self.decoder_dense(merged)), states, None


class InjectModel(CaptionModel):
    """Show and Tell (inject): the image embedding initialises every LSTM layer's [h, c]; the LSTM
    reads the caption; dropout, then the vocabulary softmax."""

    def __init__(self, config: ModelConfig, dtype_policy=None, **kwargs):
        super().__init__(config, dtype_policy, **kwargs)
        c = config
        self.image_dropout = keras.layers.Dropout(c.dropout, name="image_dropout")
        self.init_dense = [self._dense(c.units, f"init_{k}_{i}", "tanh", input_dim=c.channels)
                           for i in range(c.num_layers) for k in ("h", "c")]
        self.lstms = self._lstm_stack(c.embedding_dim)
        self.output_dropout = keras.layers.Dropout(c.dropout, name="output_dropout")
        self.logits_layer.build((None, c.units))

    def encode(self, features, training=False) -> ImageContext:
        image = self.image_dropout(self._pooled(features), training=training)
        return {f"init_{i}": layer(image) for i, layer in enumerate(self.init_dense)}

    def initial_state(self, context):
        return [context[f"init_{i}"] for i in range(2 * self.config.num_layers)]

    def forward(self, features, tokens, training=False):
        tokens = tf.convert_to_tensor(tokens, tf.int32)
        mask = tf.not_equal(tokens, PAD_ID)
        states = self.initial_state(self.encode(features, training=training))
        x = self.embedding_dropout(self.embedding(tokens), training=training)
        seq = self._run_stack(x, mask, states)
        return self.logits_layer(self.output_dropout(seq, training=training)), None

    def step(self, tokens, states, context):
        x = self.embedding(tf.convert_to_tensor(tokens, tf.int32))
        h, states = self._step_stack(x, states)
        return self.logits_layer(h), states, None


class AttentionModel(CaptionModel):
    """Show, Attend and Tell (soft attention) over L = H×W locations of a feature map.

    Per step: Bahdanau attention of the top LSTM state over the projected map, a gate
    ``beta = sigmoid(W h)`` on the context, the LSTM reads [word embedding, gated context], and a deep
    output layer ``tanh(W [h, context, embedding])`` feeds the softmax. ``attention_penalty`` is the
    paper's doubly-stochastic regulariser ``lambda * sum_l (1 - sum_t alpha_tl)^2``.
    """

    has_attention = True

    def __init__(self, config: ModelConfig, dtype_policy=None, **kwargs):
        super().__init__(config, dtype_policy, **kwargs)
        c = config
        self.feature_dropout = keras.layers.Dropout(c.dropout, name="feature_dropout")
        self.feature_dense = self._dense(c.units, "feature_dense", "relu", input_dim=c.channels)
        self.attention_keys = self._dense(c.attention_units, "attention_keys", use_bias=False, input_dim=c.units)
        self.attention_query = self._dense(c.attention_units, "attention_query", input_dim=c.units)
        self.attention_score = self._dense(1, "attention_score", use_bias=False, input_dim=c.attention_units)
        self.gate = self._dense(c.units, "gate", "sigmoid", input_dim=c.units)
        self.init_dense = [self._dense(c.units, f"init_{k}_{i}", "tanh", input_dim=c.units)
                           for i in range(c.num_layers) for k in ("h", "c")]
        self.lstms = self._lstm_stack(c.embedding_dim + c.units)
        self.deep_output = self._dense(c.embedding_dim, "deep_output", "tanh",
                                       input_dim=c.units * 2 + c.embedding_dim)
        self.output_dropout = keras.layers.Dropout(c.dropout, name="output_dropout")
        self.logits_layer.build((None, c.embedding_dim))

    def encode(self, features, training=False) -> ImageContext:
        features = tf.reshape(tf.convert_to_tensor(features, tf.float32), [-1, self.locations, self.config.channels])
        annotations = self.feature_dense(self.feature_dropout(features, training=training))   # [B, L, U]
        return {"annotations": annotations, "keys": self.attention_keys(annotations)}

    def initial_state(self, context):
        mean = tf.reduce_mean(context["annotations"], axis=1)
        return [layer(mean) for layer in self.init_dense]

    def _attend(self, h, context):
        query = self.attention_query(h)[:, None, :]                                  # [B, 1, A]
        scores = tf.squeeze(self.attention_score(tf.tanh(context["keys"] + query)), -1)  # [B, L]
        alpha = tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1)
        ctx = tf.reduce_sum(tf.cast(alpha[:, :, None], context["annotations"].dtype) * context["annotations"], 1)
        return self.gate(h) * ctx, alpha

    def _cell(self, embedded, states, context):
        """Deterministic core of one step: -> (deep features [B, 2U+E], new states, alpha [B, L])."""
        ctx, alpha = self._attend(states[-2], context)
        h, states = self._step_stack(tf.concat([embedded, tf.cast(ctx, embedded.dtype)], -1), states)
        return tf.concat([h, ctx, embedded], -1), states, alpha

    def forward(self, features, tokens, training=False):
        tokens = tf.convert_to_tensor(tokens, tf.int32)
        context = self.encode(features, training=training)
        states = self.initial_state(context)
        embedded = self.embedding_dropout(self.embedding(tokens), training=training)    # [B, T, E]

        def body(carry, x_t):
            _, _, carried = carry
            deep, new_states, alpha = self._cell(x_t, list(carried), context)
            return deep, alpha, new_states

        batch = tf.shape(tokens)[0]
        deep0 = tf.zeros([batch, 2 * self.config.units + self.config.embedding_dim], embedded.dtype)
        alpha0 = tf.zeros([batch, self.locations], tf.float32)
        deep, alphas, _ = tf.scan(body, tf.transpose(embedded, [1, 0, 2]), initializer=(deep0, alpha0, states))
        deep = tf.transpose(deep, [1, 0, 2])                                               # [B, T, 2U+E]
        attention = tf.transpose(alphas, [1, 0, 2])                                        # [B, T, L]
        out = self.output_dropout(self.deep_output(deep), training=training)
        return self.logits_layer(out), attention

    def step(self, tokens, states, context):
        embedded = self.embedding(tf.convert_to_tensor(tokens, tf.int32))
        deep, states, alpha = self._cell(embedded, states, context)
        return self.logits_layer(self.deep_output(deep)), states, alpha

    def attention_penalty(self, attention, mask):
        mask = tf.cast(mask, attention.dtype)[:, :, None]                                  # [B, T, 1]
        coverage = tf.reduce_sum(attention * mask, axis=1)                                 # [B, L]
        return self.config.attention_lambda * tf.reduce_sum(tf.square(1.0 - coverage))


class TransformerModel(CaptionModel):
    """Decoder-only Transformer (pre-layer-norm): per layer masked multi-head self-attention over the
    caption, multi-head cross-attention over the image regions, a ReLU feed-forward block, each with a
    residual connection; a final layer norm feeds the vocabulary softmax.

    Regions: the L = H×W locations of a feature map (7×7 for ``mobilenet-conv``), or one region for a
    pooled vector, projected to ``units`` with a learned region embedding added. Caption positions:
    learned (``positions="learned"``) or sinusoidal, ``config.max_positions`` of them.

    ``step`` keeps a key-value cache as its state: per layer the self-attention keys and values of the
    tokens seen so far in a fixed ``[B, max_positions, units]`` buffer (a fixed shape, so it is a plain
    ``tf.while_loop`` variable that beam search reorders with ``tf.gather``), plus the position
    ``[B]``. The image's cross-attention keys and values are computed once in ``encode``. Attention
    weights (for plots) are the last layer's cross-attention, averaged over heads.
    """

    def __init__(self, config: ModelConfig, dtype_policy=None, **kwargs):
        super().__init__(config, dtype_policy, **kwargs)
        c = config
        d = c.units
        self.has_attention = c.locations > 1
        self.heads, self.head_dim = c.heads, d // c.heads
        self.max_positions = c.max_positions
        ffn = c.ffn_units or 4 * d
        self.input_proj = self._dense(d, "input_proj", use_bias=False, input_dim=c.embedding_dim) \
            if c.embedding_dim != d else None
        if c.positions == "learned":
            self.position_embedding = keras.layers.Embedding(self.max_positions, d, name="position_embedding",
                                                             dtype=dtype_policy)
            self.position_embedding.build((None, None))
        else:
            self.position_embedding = None
            self._sinusoid = tf.constant(_sinusoidal_positions(self.max_positions, d))
        self.region_proj = self._dense(d, "region_proj", input_dim=c.channels)
        self.region_embedding = keras.layers.Embedding(c.locations, d, name="region_embedding", dtype=dtype_policy)
        self.region_embedding.build((None,))
        self.region_norm = self._norm("region_norm")
        self.dropout_layer = keras.layers.Dropout(c.dropout, name="transformer_dropout")
        self.blocks = []
        for i in range(c.num_layers):
            block = {name: self._norm(f"layer_{i}_{name}") for name in ("self_norm", "cross_norm", "ffn_norm")}
            for part in ("self", "cross"):
                for w in ("q", "k", "v", "o"):
                    block[f"{part}_{w}"] = self._dense(d, f"layer_{i}_{part}_{w}", input_dim=d)
            block["ffn_in"] = self._dense(ffn, f"layer_{i}_ffn_in", "relu", input_dim=d)
            block["ffn_out"] = self._dense(d, f"layer_{i}_ffn_out", input_dim=ffn)
            self.blocks.append(block)
        self.final_norm = self._norm("final_norm")
        self.logits_layer.build((None, d))

    def _norm(self, name):
        layer = keras.layers.LayerNormalization(epsilon=1e-5, name=name, dtype=self._policy)
        layer.build((None, self.config.units))
        return layer

    # ------------------------------------------------------------------ pieces
    def _split(self, x):
        """[B, N, D] -> [B, heads, N, head_dim]."""
        b, n = tf.shape(x)[0], tf.shape(x)[1]
        return tf.transpose(tf.reshape(x, [b, n, self.heads, self.head_dim]), [0, 2, 1, 3])

    def _merge(self, x):
        """[B, heads, N, head_dim] -> [B, N, D]."""
        b, n = tf.shape(x)[0], tf.shape(x)[2]
        return tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [b, n, self.config.units])

    def _attend(self, q, k, v, mask):
        """Scaled dot-product attention; q [B, h, T, dh], k/v [B, h, S, dh], mask broadcastable to
        [B, h, T, S] (True = may attend). -> ([B, h, T, dh], weights [B, h, T, S] float32)."""
        scores = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32) / float(self.head_dim) ** 0.5
        if mask is not None:
            scores = tf.where(mask, scores, -1e9)
        weights = tf.nn.softmax(scores, axis=-1)
        return tf.matmul(tf.cast(weights, v.dtype), v), weights

    def _embed(self, tokens, positions, training):
        x = self.embedding(tokens)
        if self.input_proj is not None:
            x = self.input_proj(x)
        if self.position_embedding is not None:
            pos = self.position_embedding(positions)
        else:
            pos = tf.gather(self._sinusoid, positions)
        x = x * float(self.config.units) ** 0.5 + tf.cast(pos, x.dtype)
        return self.dropout_layer(x, training=training)

    def _cross_and_ffn(self, x, block, i, context, training):
        h = block["cross_norm"](x)
        att, weights = self._attend(self._split(block["cross_q"](h)), context[f"cross_k_{i}"],
                                    context[f"cross_v_{i}"], None)
        x = x + self.dropout_layer(block["cross_o"](self._merge(att)), training=training)
        h = block["ffn_norm"](x)
        x = x + self.dropout_layer(block["ffn_out"](self.dropout_layer(block["ffn_in"](h), training=training)),
                                   training=training)
        return x, weights

    # ------------------------------------------------------------------ interface
    def encode(self, features, training=False) -> ImageContext:
        c = self.config
        regions = tf.reshape(tf.convert_to_tensor(features, tf.float32), [-1, c.locations, c.channels])
        memory = self.region_proj(regions) + self.region_embedding(tf.range(c.locations))[None]
        memory = self.region_norm(self.dropout_layer(memory, training=training))
        context = {}
        for i, block in enumerate(self.blocks):
            context[f"cross_k_{i}"] = self._split(block["cross_k"](memory))      # [B, h, L, dh]
            context[f"cross_v_{i}"] = self._split(block["cross_v"](memory))
        return context

    def initial_state(self, context):
        batch = tf.shape(context["cross_k_0"])[0]
        dtype = context["cross_k_0"].dtype
        empty = tf.zeros([batch, self.heads, self.max_positions, self.head_dim], dtype)
        return [tf.zeros([batch], tf.int32)] + [empty for _ in range(2 * self.config.num_layers)]

    def forward(self, features, tokens, training=False):
        tokens = tf.convert_to_tensor(tokens, tf.int32)
        context = self.encode(features, training=training)
        length = tf.shape(tokens)[1]
        x = self._embed(tokens, tf.range(length)[None, :], training)
        causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)[None, None]   # [1, 1, T, T]
        weights = None
        for i, block in enumerate(self.blocks):
            h = block["self_norm"](x)
            att, _ = self._attend(self._split(block["self_q"](h)), self._split(block["self_k"](h)),
                                  self._split(block["self_v"](h)), causal)
            x = x + self.dropout_layer(block["self_o"](self._merge(att)), training=training)
            x, weights = self._cross_and_ffn(x, block, i, context, training)
        logits = self.logits_layer(self.final_norm(x))
        attention = tf.reduce_mean(weights, axis=1) if self.has_attention else None       # [B, T, L]
        return logits, attention

    def step(self, tokens, states, context):
        position, caches = states[0], list(states[1:])
        tokens = tf.convert_to_tensor(tokens, tf.int32)
        x = self._embed(tokens[:, None], position[:, None], False)                         # [B, 1, D]
        slot = tf.one_hot(position, self.max_positions, on_value=True, off_value=False, dtype=tf.bool)  # [B, P]
        visible = tf.sequence_mask(position + 1, self.max_positions)[:, None, None, :]     # [B, 1, 1, P]
        new_caches = []
        weights = None
        for i, block in enumerate(self.blocks):
            h = block["self_norm"](x)
            k_cache = tf.where(slot[:, None, :, None], self._split(block["self_k"](h)), caches[2 * i])
            v_cache = tf.where(slot[:, None, :, None], self._split(block["self_v"](h)), caches[2 * i + 1])
            new_caches += [k_cache, v_cache]
            att, _ = self._attend(self._split(block["self_q"](h)), k_cache, v_cache, visible)
            x = x + block["self_o"](self._merge(att))
            x, weights = self._cross_and_ffn(x, block, i, context, False)
        logits = self.logits_layer(self.final_norm(x))[:, 0]
        attention = tf.reduce_mean(weights, axis=1)[:, 0] if self.has_attention else None  # [B, L]
        return logits, [position + 1] + new_caches, attention


def _sinusoidal_positions(positions: int, width: int):
    """The original Transformer's sinusoidal position table [positions, width] (float32)."""
    import numpy as np
    pos = np.arange(positions)[:, None].astype("float64")
    i = np.arange(width)[None, :]
    angle = pos / np.power(10000.0, (2 * (i // 2)) / width)
    table = np.where(i % 2 == 0, np.sin(angle), np.cos(angle))
    return table.astype("float32")


_MODELS = {"merge": MergeModel, "inject": InjectModel, "attention": AttentionModel,
           "transformer": TransformerModel}


def build_model(config: ModelConfig, dtype_policy: Optional[str] = None) -> CaptionModel:
    """A ready ``CaptionModel`` (weights created) for ``config``; raises ValueError on a bad config."""
    config.validate()
    model = _MODELS[config.arch](config, dtype_policy=dtype_policy)
    model(model.dummy_inputs(), training=False)   # marks the model built; weights already exist
    return model
