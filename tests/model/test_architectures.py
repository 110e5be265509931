"""The four architectures and their step interface (what decoding builds on)."""
import numpy as np
import pytest

from captionbeam.model.config import ModelConfig

CASES = [
    ("merge", [16], 1, "learned"),
    ("merge", [2, 2, 16], 2, "learned"),      # a map is mean-pooled for merge/inject
    ("inject", [16], 2, "learned"),
    ("attention", [2, 3, 16], 1, "learned"),  # (H, W, C)
    ("attention", [5, 16], 2, "learned"),     # (L, C)
    ("transformer", [2, 3, 16], 2, "learned"),      # cross-attention over 6 regions
    ("transformer", [16], 1, "learned"),            # one region: a pooled vector
    ("transformer", [5, 16], 3, "sinusoidal"),
]


def _config(arch, shape, layers, positions="learned"):
    return ModelConfig(arch=arch, vocab_size=23, max_length=8, feature_shape=shape, units=32,
                       embedding_dim=24, num_layers=layers, attention_units=16, dropout=0.5, heads=4,
                       positions=positions)


@pytest.mark.parametrize("arch,shape,layers,positions", CASES)
def test_step_reproduces_teacher_forcing(arch, shape, layers, positions):
    from captionbeam.model.architectures import build_model
    model = build_model(_config(arch, shape, layers, positions))
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, *shape)).astype("float32")
    tokens = rng.integers(4, 23, size=(4, 7)).astype("int32")
    tokens[:, 0] = 2
    tokens[1, 5:] = 0          # padded caption
    tokens[3, 3:] = 0
    full, attention = model.forward(features, tokens, training=False)
    assert full.shape == (4, 7, 23) and full.dtype.name == "float32"
    np.testing.assert_allclose(model((features, tokens)).numpy(), full.numpy(), atol=1e-6)

    context = model.encode(features)
    states = model.initial_state(context)
    assert all(s.shape[0] == 4 for s in states) and all(v.shape[0] == 4 for v in context.values())
    logits, alphas = [], []
    for t in range(tokens.shape[1]):
        step_logits, states, alpha = model.step(tokens[:, t], states, context)
        logits.append(step_logits.numpy())
        alphas.append(alpha)
    stepped = np.stack(logits, 1)
    valid = tokens != 0
    np.testing.assert_allclose(stepped[valid], full.numpy()[valid], atol=1e-5)
    if arch == "attention" or (arch == "transformer" and len(shape) > 1):
        assert model.has_attention and attention.shape == (4, 7, model.locations)
        np.testing.assert_allclose(attention.numpy().sum(-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(np.stack([a.numpy() for a in alphas], 1)[valid], attention.numpy()[valid],
                                   atol=1e-5)
    else:
        assert attention is None and all(a is None for a in alphas)


def test_dropout_only_in_training():
    from captionbeam.model.architectures import build_model
    model = build_model(_config("merge", [16], 1))
    f = np.ones((2, 16), "float32")
    t = np.array([[2, 5, 6], [2, 7, 0]], "int32")
    a, b = model((f, t), training=False), model((f, t), training=False)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.allclose(model((f, t), training=True).numpy(), a.numpy())


def test_doubly_stochastic_penalty_is_zero_when_attention_covers_each_location_once():
    import tensorflow as tf
    from captionbeam.model.architectures import build_model
    model = build_model(_config("attention", [3, 16], 1))
    eye = tf.eye(3)[None]                        # step t attends location t: coverage exactly 1
    assert float(model.attention_penalty(eye, tf.ones([1, 3]))) == pytest.approx(0.0)
    uniform = tf.fill([1, 3, 3], 1.0 / 3)
    mask = tf.constant([[1.0, 1.0, 0.0]])        # a padded step does not count
    assert float(model.attention_penalty(uniform, mask)) == pytest.approx(3 * (1 / 3) ** 2, rel=1e-5)


def test_attention_needs_a_feature_map():
    from captionbeam.model.architectures import build_model
    with pytest.raises(ValueError, match="spatial feature map"):
        build_model(_config("attention", [16], 1))


def test_unknown_arch():
    from captionbeam.model.architectures import build_model
    with pytest.raises(ValueError, match="--arch"):
        build_model(_config("nosuch", [16], 1))


def test_weights_round_trip(tmp_path):
    from captionbeam.model.architectures import build_model
    cfg = _config("attention", [2, 2, 16], 1)
    a, b = build_model(cfg), build_model(cfg)
    path = str(tmp_path / "w.weights.h5")
    a.save_weights(path)
    b.load_weights(path)
    f = np.random.rand(2, 2, 2, 16).astype("float32")
    t = np.array([[2, 5, 6], [2, 7, 0]], "int32")
    np.testing.assert_allclose(a((f, t)).numpy(), b((f, t)).numpy(), atol=1e-6)


def test_transformer_checks_heads_and_positions():
    from captionbeam.model.architectures import build_model
    with pytest.raises(ValueError, match="--heads 5 must divide --units 32"):
        build_model(ModelConfig(arch="transformer", vocab_size=23, max_length=8, feature_shape=[16], units=32,
                                heads=5))
    with pytest.raises(ValueError, match="--positions"):
        build_model(ModelConfig(arch="transformer", vocab_size=23, max_length=8, feature_shape=[16], units=32,
                                positions="rotary"))


def test_transformer_decoder_refuses_more_steps_than_positions():
    from captionbeam.model.architectures import build_model
    from captionbeam.model.decode import Decoder
    model = build_model(_config("transformer", [16], 1))
    assert model.max_positions == 64
    Decoder(model, max_length=64)
    with pytest.raises(ValueError, match="--max-length 65: this transformer model has 64 positions"):
        Decoder(model, max_length=65)
