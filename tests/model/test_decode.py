"""Batched greedy and beam search (model.decode) on tiny fitted models of all four architectures."""
import numpy as np
import pytest
import tensorflow as tf

from captionbeam.model.decode import NEVER_GENERATED, Decoder, beam_search, greedy_search, sample_search, tokens_to_strings
from captionbeam.model.vocab import END_ID, PAD_ID, START_ID, UNK, UNK_ID
from tests.plugins.decoding import CAPTIONS, decoding_vocab, prefer_unk, synthetic_batch

ARCHS = ("merge", "inject", "attention", "transformer")


def _features(model, n=12, seed=5):
    feats, classes = synthetic_batch(tuple(model.config.feature_shape), n, seed=seed)
    return feats, classes


@pytest.mark.learning
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_decodes_the_learned_captions_and_stops_at_end(fitted_models, arch):
    model = fitted_models[arch]
    vocab = decoding_vocab()
    feats, classes = _features(model)
    out = Decoder(model, max_length=9)(feats)
    assert out.captions(vocab) == [CAPTIONS[k] for k in classes]
    assert out.finished.all()
    for row, length in zip(out.tokens, out.length):
        assert row[length - 1] == END_ID and (row[length:] == PAD_ID).all()
        assert START_ID not in row[:length] and PAD_ID not in row[:length]
    # the loop stopped when the longest caption ended, not at max_length
    assert out.tokens.shape[1] == max(len(CAPTIONS[k].split()) for k in classes) + 1
    assert (out.attention is not None) == (arch in ("attention", "transformer"))
    if out.attention is not None:
        assert out.attention.shape == (len(feats), out.tokens.shape[1], 4)
        for att, length in zip(out.attention, out.length):
            np.testing.assert_allclose(att[:length].sum(-1), 1.0, atol=1e-5)
            assert (att[length:] == 0).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_refeeding_the_whole_prefix(fitted_models, arch):
    """Carrying the state forward gives what the tutorial's loop (full prefix every word) gives."""
    model = fitted_models[arch]
    feats, _ = _features(model, n=4, seed=9)
    # a half-trained view: perturbed features make less peaked, longer outputs
    feats = feats + np.random.default_rng(0).normal(0, 1.0, feats.shape).astype("float32")
    out = Decoder(model, max_length=7)(feats)
    for i in range(len(feats)):
        prefix = [START_ID]
        total = 0.0
        for _ in range(out.length[i]):
            logits = model((feats[i:i + 1], np.array([prefix], np.int32)), training=False)[0, -1].numpy()
            lp = logits - np.logaddexp.reduce(logits)       # the model's own distribution
            nxt = int(np.argmax(np.where(np.isin(np.arange(len(lp)), NEVER_GENERATED), -np.inf, lp)))
            total += lp[nxt]
            prefix.append(nxt)
            if nxt == END_ID:
                break
        assert prefix[1:] == list(out.tokens[i, :out.length[i]])
        assert out.log_prob[i] == pytest.approx(total, abs=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_beam_size_one_is_greedy(fitted_models, arch):
    model = fitted_models[arch]
    feats, _ = _features(model)
    feats = feats + np.random.default_rng(1).normal(0, 1.5, feats.shape).astype("float32")
    g = tf.function(lambda f: greedy_search(model, f, 8))(feats)
    b = tf.function(lambda f: beam_search(model, f, 1, 8))(feats)
    np.testing.assert_array_equal(g["tokens"].numpy(), b["tokens"].numpy())
    np.testing.assert_allclose(g["log_prob"].numpy(), b["log_prob"].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(g["length"].numpy(), b["length"].numpy())
    if model.has_attention:
        np.testing.assert_allclose(g["attention"].numpy(), b["attention"].numpy(), atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_beam_search_finds_at_least_greedys_log_prob(fitted_models, arch):
    model = fitted_models[arch]
    feats, _ = _features(model, n=16, seed=2)
    feats = feats + np.random.default_rng(2).normal(0, 2.0, feats.shape).astype("float32")
    g = Decoder(model, max_length=8)(feats)
    b = Decoder(model, max_length=8, beam_size=4)(feats)
    assert (b.log_prob >= g.log_prob - 1e-4).all()
    raw = tf.function(lambda f: beam_search(model, f, 4, 8))(feats)
    beams = raw["beam_score"].numpy()
    assert (np.diff(beams, axis=1) <= 1e-6).all()        # beams come best first
    np.testing.assert_allclose(raw["log_prob"].numpy(), b.log_prob, rtol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("beam", [1, 3])
def test_batched_equals_per_image(fitted_models, arch, beam):
    model = fitted_models[arch]
    feats, _ = _features(model, n=6, seed=3)
    feats = feats + np.random.default_rng(3).normal(0, 1.0, feats.shape).astype("float32")
    dec = Decoder(model, max_length=8, beam_size=beam, alpha=0.7)
    batched = dec(feats)
    for i in range(len(feats)):
        one = dec(feats[i:i + 1])
        n = int(one.length[0])
        assert int(batched.length[i]) == n
        np.testing.assert_array_equal(batched.tokens[i, :n], one.tokens[0, :n])
        assert batched.log_prob[i] == pytest.approx(float(one.log_prob[0]), abs=1e-4)
        if model.has_attention:
            np.testing.assert_allclose(batched.attention[i, :n], one.attention[0, :n], atol=1e-5)


def test_length_penalty_prefers_longer_captions(fitted_models):
    model = fitted_models["inject"]
    feats, _ = _features(model, n=16, seed=4)
    feats = feats + np.random.default_rng(4).normal(0, 2.0, feats.shape).astype("float32")
    raw = Decoder(model, max_length=8, beam_size=4, alpha=0.0)(feats)
    norm = Decoder(model, max_length=8, beam_size=4, alpha=1.0)(feats)
    assert norm.length.mean() >= raw.length.mean()
    np.testing.assert_allclose(norm.score, norm.log_prob / norm.length, rtol=1e-5)


def test_max_length_cuts_off_and_reports_unfinished(fitted_models):
    model = fitted_models["merge"]
    feats, classes = _features(model, n=8)
    out = Decoder(model, max_length=2, beam_size=2)(feats)
    assert out.tokens.shape[1] == 2 and (out.length <= 2).all()
    assert not out.finished[[k != 3 for k in classes]].any()      # "the cat <end>" fits in 3, not 2


def test_tokens_to_strings_stops_at_end():
    vocab = decoding_vocab()
    ids = np.array([vocab.encode(["a", "red", "dog", "<end>", "cat"]), vocab.encode(["the", "<pad>", "cat", "a", "a"])])
    assert [s.decode() for s in tokens_to_strings(ids, vocab.tokens).numpy()] == ["a red dog", "the"]


def test_bad_arguments_fail_fast(fitted_models):
    with pytest.raises(ValueError, match="--beam-size"):
        Decoder(fitted_models["merge"], beam_size=0)
    with pytest.raises(ValueError, match="--max-length"):
        Decoder(fitted_models["merge"], max_length=0)


# ----------------------------------------------------------------------------- <unk> is never generated
@pytest.mark.parametrize("arch", ARCHS)
def test_a_model_that_prefers_unk_never_emits_it(fitted_models, arch):
    """Greedy, beam search and SCST's sampling, on a model whose output bias puts <unk> first everywhere."""
    model = prefer_unk(fitted_models[arch])
    feats, _ = _features(model, n=8, seed=6)
    # the control: unmasked, <unk> is this model's first word for every image (so the test can fail)
    context = model.encode(tf.constant(feats))
    logits, _, _ = model.step(tf.fill([len(feats)], START_ID), list(model.initial_state(context)), context)
    assert (np.argmax(logits.numpy(), -1) == UNK_ID).all()
    for beam in (1, 3):
        out = Decoder(model, max_length=8, beam_size=beam, alpha=0.5 * (beam > 1))(feats)
        assert UNK_ID not in out.tokens and UNK not in " ".join(out.captions(decoding_vocab()))
        assert (out.length >= 1).all()
    sampled = tf.function(lambda f: sample_search(model, f, 8, tf.constant([1, 2])))(feats)
    assert UNK_ID not in sampled["tokens"].numpy()
    raw = tf.function(lambda f: beam_search(model, f, 3, 8))(feats)
    assert UNK_ID not in raw["beam_tokens"].numpy()[:, 0]


def test_no_unk_in_what_any_command_writes(unk_model_dirs, tmp_path, capsys):
    """evaluate, caption, the export's serving function and bulk with a model that prefers <unk>."""
    import json
    from PIL import Image
    from captionbeam.launch.cli import main as cli
    from tests.plugins.decoding import draw_images
    model_dir, data_dir = unk_model_dirs["features"]
    preds = tmp_path / "preds.jsonl"
    assert cli(["evaluate", "--model-dir", model_dir, "--data", data_dir, "--beam-size", "2", "--output",
                str(preds), "--coco-metrics", "bleu", "--json"]) == 0
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 12 and all(r["caption"] and UNK not in r["caption"] for r in rows)

    images = tmp_path / "images"
    images.mkdir()
    for i, img in enumerate(draw_images(4, size=32, seed=4)[0]):
        Image.fromarray(img).save(images / f"im{i}.png")
    paths = sorted(str(p) for p in images.iterdir())
    image_dir = unk_model_dirs["image"]
    capsys.readouterr()
    for beam in ("1", "3"):
        assert cli(["caption", "--model-dir", image_dir, "--json", "--beam-size", beam, *paths]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(rows) == 4 and all(UNK not in r["tokens"] for r in rows)

    out = tmp_path / "export"
    assert cli(["export", "--model-dir", image_dir, "--output", str(out), "--beam-size", "2"]) == 0
    served = tf.saved_model.load(str(out)).signatures["serving_default"](
        images=tf.constant([open(p, "rb").read() for p in paths]))
    assert served["valid"].numpy().all() and UNK_ID not in served["tokens"].numpy()

    capsys.readouterr()
    bulk_out = tmp_path / "bulk"
    assert cli(["bulk", "--images", str(images / "*.png"), "--model-dir", image_dir, "--output", str(bulk_out),
                "--batch-size", "3", "--json"]) == 0
    rows = [json.loads(line) for f in (bulk_out / "captions").glob("captions-*") for line in f.read_text().splitlines()]
    assert len(rows) == 4 and all(UNK not in r["caption"] for r in rows)


def test_length_penalty_default_and_every_command(fitted_models, image_model_dir):
    """Default 0 keeps the raw log-prob ranking; bulk's --length-penalty reaches its workers' decoder, and an
    export's baked-in value is enforced like --beam-size."""
    from captionbeam.launch.commands.bulk import check_export_flags
    from captionbeam.pipelines.bulk import BulkConfig
    from captionbeam.pipelines.bulk_handler import CaptionerModelHandler
    model = fitted_models["inject"]
    feats, _ = _features(model, n=8, seed=4)
    feats = feats + np.random.default_rng(4).normal(0, 2.0, feats.shape).astype("float32")
    default, raw = Decoder(model, max_length=8, beam_size=4)(feats), Decoder(model, max_length=8, beam_size=4, alpha=0.0)(feats)
    np.testing.assert_array_equal(default.tokens, raw.tokens)
    np.testing.assert_array_equal(default.score, default.log_prob)
    config = BulkConfig(images=("x",), output="o", model_dir=image_model_dir["merge"], beam_size=3, length_penalty=0.6)
    captioner = CaptionerModelHandler(config.captioner_config()).load_model()
    assert captioner.alpha == 0.6 and captioner.decoder.alpha == 0.6 and captioner.decoder.beam_size == 3
    with pytest.raises(ValueError, match="length_penalty must be >= 0|--length-penalty must be >= 0"):
        BulkConfig(images=("x",), output="o", model_dir="m", length_penalty=-1.0)
    meta = {"beam_size": 2, "max_length": 9, "length_penalty": 0.0}
    check_export_flags(meta, "E", None, None, None, 0.0)
    with pytest.raises(ValueError, match="--length-penalty 0.5: --model-dir E is an export whose length penalty is 0.0"):
        check_export_flags(meta, "E", None, None, None, 0.5)
