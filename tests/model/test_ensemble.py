"""Ensembles (model.ensemble): decoding over the members' averaged log-probabilities, checked against an
independent step-by-step computation; ``ensemble.json`` directories through the Captioner, evaluate,
caption and export; members that cannot be combined are refused."""
import json
import os

import numpy as np
import pytest

from captionbeam.model import records
from captionbeam.model.decode import NEVER_GENERATED, Decoder
from captionbeam.model.ensemble import ENSEMBLE_FILE, Ensemble, check_compatible, parse_ensemble, write_ensemble
from captionbeam.model.vocab import END_ID, RESERVED, START_ID, Vocabulary
from tests.plugins.decoding import CAPTIONS, decoding_vocab, draw_images, synthetic_batch

PAIRS = (("merge", "inject"), ("attention", "transformer"))


def _noisy_features(model, n, seed, noise=1.5):
    feats, _ = synthetic_batch(tuple(model.config.feature_shape), n, seed=seed)
    return feats + np.random.default_rng(seed).normal(0, noise, feats.shape).astype("float32")


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - np.logaddexp.reduce(x)


def _mean_log_probs(members, feature, prefix):
    """Averaged next-token log-probabilities after ``prefix``, each member re-fed the whole prefix through
    its teacher-forced ``call`` (not the step interface the decoders use)."""
    outs = [_log_softmax(m((feature[None], np.array([prefix], np.int32)), training=False)[0, -1].numpy())
            for m in members]
    return np.mean(outs, axis=0)


@pytest.mark.parametrize("arch,beam", [("merge", 1), ("inject", 3), ("attention", 1), ("transformer", 3)])
def test_an_ensemble_of_one_is_the_model_alone(fitted_models, arch, beam):
    model = fitted_models[arch]
    feats = _noisy_features(model, 6, seed=11)
    alone = Decoder(model, max_length=8, beam_size=beam, alpha=0.6)(feats)
    ens = Decoder(Ensemble([model]), max_length=8, beam_size=beam, alpha=0.6)(feats)
    np.testing.assert_array_equal(ens.tokens, alone.tokens)
    np.testing.assert_array_equal(ens.log_prob, alone.log_prob)
    np.testing.assert_array_equal(ens.score, alone.score)
    if model.has_attention:
        np.testing.assert_array_equal(ens.attention, alone.attention)


@pytest.mark.parametrize("pair", PAIRS, ids="+".join)
def test_greedy_over_two_models_is_the_argmax_of_their_mean_log_probs(fitted_models, pair):
    members = [fitted_models[a] for a in pair]
    feats = _noisy_features(members[0], 3, seed=12)
    out = Decoder(Ensemble(members), max_length=7)(feats)
    alone = [Decoder(m, max_length=7)(feats) for m in members]
    for i in range(len(feats)):
        prefix, total = [START_ID], 0.0
        for _ in range(7):
            lp = _mean_log_probs(members, feats[i], prefix)
            lp[list(NEVER_GENERATED)] = -np.inf
            nxt = int(np.argmax(lp))
            total += lp[nxt]
            prefix.append(nxt)
            if nxt == END_ID:
                break
        assert list(out.tokens[i, :out.length[i]]) == prefix[1:]
        assert out.log_prob[i] == pytest.approx(total, abs=1e-4)
    # the ensemble is neither member: somewhere it disagrees with one of them
    assert any(out.captions(decoding_vocab()) != a.captions(decoding_vocab()) for a in alone) or \
        any(not np.allclose(out.log_prob, a.log_prob, atol=1e-3) for a in alone)


@pytest.mark.parametrize("pair", PAIRS, ids="+".join)
def test_beam_search_over_two_models_scores_by_their_mean_log_probs(fitted_models, pair):
    """Each image's beam result: log_prob is the sum of the members' mean log-probabilities of its tokens
    (recomputed by re-feeding prefixes), score = log_prob / length**alpha, and no worse than greedy's."""
    members = [fitted_models[a] for a in pair]
    feats = _noisy_features(members[0], 2, seed=13, noise=2.0)
    ens = Ensemble(members)
    greedy = Decoder(ens, max_length=7)(feats)
    for alpha in (0.0, 0.8):
        out = Decoder(ens, max_length=7, beam_size=3, alpha=alpha)(feats)
        for i in range(len(feats)):
            tokens = [int(t) for t in out.tokens[i, :out.length[i]]]
            assert not set(tokens) & set(NEVER_GENERATED)
            total = sum(_mean_log_probs(members, feats[i], [START_ID] + tokens[:j])[t] for j, t in enumerate(tokens))
            assert out.log_prob[i] == pytest.approx(total, abs=1e-4)
            assert out.score[i] == pytest.approx(total / len(tokens) ** alpha, abs=1e-4)
        if alpha == 0.0:
            assert (out.log_prob >= greedy.log_prob - 1e-4).all()


def test_members_must_share_vocabulary_and_encoder():
    vocab = decoding_vocab()
    spec = records.FeaturesSpec(encoder="mobilenet", feature_shape=[8], image_size=[32, 32], preprocessing="x",
                                weights="none", resize_method="bilinear")
    check_compatible([("a", vocab, spec), ("b", Vocabulary(tuple(vocab.tokens)), spec)])
    other_vocab = Vocabulary(RESERVED + tuple(reversed(vocab.tokens[len(RESERVED):])))
    with pytest.raises(ValueError, match="one vocabulary: b/vocab.txt .* at id 4"):
        check_compatible([("a", vocab, spec), ("b", other_vocab, spec)])
    for change in ({"image_size": [64, 64]}, {"weights": "imagenet"}, {"resize_method": "bicubic"}):
        other = records.FeaturesSpec(**{**spec.__dict__, **change})
        with pytest.raises(ValueError, match="one image encoder: b has"):
            check_compatible([("a", vocab, spec), ("b", vocab, other)])
    assert check_compatible([("a", vocab, spec), ("b", vocab, spec)]).slices is None
    for text in ("[]", '{"members": []}', '{"members": ["a", 3]}', "not json"):
        with pytest.raises(ValueError, match="E/ensemble.json"):
            parse_ensemble(text, "E/ensemble.json")


def _registered_spec(name, shape, weights="none", size=64, **change):
    from captionbeam.model.encoders import EncoderConfig, describe
    d = describe(EncoderConfig(name, weights, size)).with_feature_shape(shape)
    fields = dict(encoder=name, feature_shape=list(shape), image_size=[size, size], preprocessing=d.preprocessing,
                  weights=weights, encoder_spec=d, resize_method="bilinear")
    return records.FeaturesSpec(**{**fields, **change})


def test_members_across_encoders_read_their_slice_of_the_composite():
    vocab = decoding_vocab()
    v1, v2 = _registered_spec("mobilenet-conv", (2, 2, 1024)), _registered_spec("mobilenet_v2-conv", (2, 2, 1280))
    reads = check_compatible([("a", vocab, v1), ("b", vocab, v2), ("c", vocab, v1)])
    assert reads.across_encoders and reads.slices == ((0, 1024), (1024, 2304), (0, 1024))
    s = reads.spec
    assert s.encoder == "mobilenet-conv+mobilenet_v2-conv" and list(s.feature_shape) == [2, 2, 2304]
    d = s.encoder_description()
    assert (d.name, d.family, d.feature_shape, d.image_size, d.weights) == (s.encoder, "composite", (2, 2, 2304), 64,
                                                                          "none")
    refused = [
        (_registered_spec("mobilenet_v2-conv", (2, 2, 1280), weights="imagenet"), "has weights 'imagenet'"),
        (_registered_spec("mobilenet_v2-conv", (3, 3, 1280), size=96), "has image size"),
        (_registered_spec("mobilenet_v2-conv", (2, 2, 1280), resize_method="lanczos"), "has resize method"),
        (_registered_spec("mobilenet", (1024,)), "another grid|mixes feature maps"),
        (records.FeaturesSpec(encoder="synthetic", feature_shape=[2, 2, 8], image_size=[64, 64], preprocessing="x",
                              weights="none"), "has encoder 'synthetic'"),
        (_registered_spec("mobilenet-conv+mobilenet_v2-conv", (2, 2, 2304)), "a composite"),
    ]
    for other, why in refused:
        with pytest.raises(ValueError, match=f"can be joined into one.*: b .*({why})"):
            check_compatible([("a", vocab, v1), ("b", vocab, other)])


def test_evaluate_an_ensemble_directory(decoding_model_dirs, tmp_path, capsys):
    """evaluate --model-dir E: an ensemble of one gives the model's own predictions; of two, the captions of
    the in-process ensemble; members with different encoders exit 2 naming what differs."""
    from captionbeam.launch.cli import main as cli
    from captionbeam.model.captioner import Captioner
    (merge_dir, data_dir, truth), (inject_dir, _, _) = decoding_model_dirs["merge"], decoding_model_dirs["inject"]

    def evaluate(model_dir, name):
        out = tmp_path / f"{name}.jsonl"
        rc = cli(["evaluate", "--model-dir", model_dir, "--data", data_dir, "--json", "--beam-size", "2",
                  "--output", str(out), "--coco-metrics", "bleu"])
        report = json.loads(capsys.readouterr().out)
        assert rc == 0
        return {r["image_id"]: (r["caption"], r["log_prob"]) for r in map(json.loads, out.read_text().splitlines())}, report

    one = write_ensemble(str(tmp_path / "one"), [merge_dir])
    assert one == [merge_dir] and json.loads((tmp_path / "one" / ENSEMBLE_FILE).read_text()) == {"members": [merge_dir]}
    alone, _ = evaluate(merge_dir, "alone")
    assert evaluate(str(tmp_path / "one"), "one")[0] == alone
    assert cli(["ensemble", "--member", merge_dir, "--member", inject_dir, "--output", str(tmp_path / "two")]) == 0
    assert f"use it as --model-dir {tmp_path / 'two'}" in capsys.readouterr().out
    assert cli(["ensemble", "--member", merge_dir, "--output", str(tmp_path / "two")]) == 2
    assert "already holds ensemble.json (pass --overwrite)" in capsys.readouterr().err
    two, report = evaluate(str(tmp_path / "two"), "two")
    assert {i: c for i, (c, _) in two.items()} == {i: CAPTIONS[k] for i, k in truth.items()}
    cap = Captioner.load(str(tmp_path / "two"), beam_size=2)
    assert cap.members == [merge_dir, inject_dir] and report["decoding"]["model_version"] == cap.model_version
    assert report["decoding"]["arch"] == "merge+inject" and report["decoding"]["members"] == cap.members
    assert cap.model_version != Captioner.load(merge_dir).model_version
    assert (tmp_path / "two" / "eval").is_dir() is False      # --output given: nothing written into E
    # a member that is not there: exit 2 naming it
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ENSEMBLE_FILE).write_text(json.dumps({"members": [merge_dir, str(tmp_path / "missing")]}))
    rc = cli(["evaluate", "--model-dir", str(bad), "--data", data_dir])
    assert rc == 2 and "missing" in capsys.readouterr().err


def test_mixed_encoders_are_refused_by_every_command(decoding_model_dirs, image_model_dir, tmp_path, capsys):
    from captionbeam.launch.cli import main as cli
    merge_dir, data_dir, _ = decoding_model_dirs["merge"]
    with pytest.raises(ValueError, match="one image encoder"):
        write_ensemble(str(tmp_path / "w"), [merge_dir, image_model_dir["merge"]])
    assert cli(["ensemble", "--member", merge_dir, "--member", image_model_dir["merge"], "--output",
                str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "--member: ensemble members must share one image encoder" in err and not (tmp_path / "w").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ENSEMBLE_FILE).write_text(json.dumps({"members": [merge_dir, image_model_dir["merge"]]}))
    image = tmp_path / "x.png"
    from PIL import Image
    Image.fromarray(draw_images(1, size=32)[0][0]).save(image)
    for argv in (["evaluate", "--model-dir", str(bad), "--data", data_dir],
                 ["caption", "--model-dir", str(bad), str(image)],
                 ["export", "--model-dir", str(bad), "--output", str(tmp_path / "exp")]):
        rc = cli(argv)
        err = capsys.readouterr().err
        assert rc == 2 and "one image encoder" in err and "mobilenet" in err, (argv, err)


def _image_files(directory, n=4, seed=21):
    """Drawn PNGs at the encoder's own size (32 px), so the export's in-graph resize is a no-op."""
    from PIL import Image
    directory.mkdir()
    images, _ = draw_images(n, size=32, seed=seed)
    paths = []
    for i, img in enumerate(images):
        Image.fromarray(img).save(directory / f"im{i}.png")
        paths.append(str(directory / f"im{i}.png"))
    return paths


def _caption_rows(capsys, model_dir, paths, *flags):
    from captionbeam.launch.cli import main as cli
    capsys.readouterr()
    rc = cli(["caption", "--model-dir", model_dir, "--json", *flags, *paths])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return {r["path"]: r for r in map(json.loads, out.splitlines())}


def _bulk_rows(capsys, model_dir, pattern, output, *flags):
    import glob as globlib
    from captionbeam.launch.cli import main as cli
    capsys.readouterr()
    rc = cli(["bulk", "--images", pattern, "--model-dir", model_dir, "--output", output, "--batch-size", "3",
              "--json", *flags])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rows = {}
    for f in globlib.glob(f"{output}/captions/captions-*"):
        for line in open(f).read().splitlines():
            r = json.loads(line)
            rows[r["path"]] = r
    return rows


def test_an_ensemble_through_caption_export_and_bulk(image_ensemble_dir, image_model_dir, tmp_path, capsys):
    """caption, bulk and the exported SavedModel (one export holding both members) give the same captions
    for the same images with the ensemble; the export's metadata names the members."""
    import tensorflow as tf
    from captionbeam.launch.cli import main as cli
    from captionbeam.model.captioner import Captioner
    paths = _image_files(tmp_path / "images")
    captions = _caption_rows(capsys, image_ensemble_dir, paths, "--beam-size", "2", "--length-penalty", "0.7")
    ens = Captioner.load(image_ensemble_dir, beam_size=2)
    assert ens.members == [image_model_dir["merge"], os.path.join(os.path.dirname(image_ensemble_dir), "merge_b")]
    # the ensemble is not its first member alone: its log-probs differ
    alone = _caption_rows(capsys, image_model_dir["merge"], paths, "--beam-size", "2", "--length-penalty", "0.7")
    assert any(abs(captions[p]["log_prob"] - alone[p]["log_prob"]) > 1e-3 for p in paths)

    out = tmp_path / "export"
    rc = cli(["export", "--model-dir", image_ensemble_dir, "--output", str(out), "--beam-size", "2",
              "--length-penalty", "0.7"])
    meta = json.loads(capsys.readouterr().out)
    assert rc == 0 and meta["members"] == ens.members and meta["arch"] == "merge+merge"
    assert meta["length_penalty"] == 0.7
    assert meta["model_version"] == ens.model_version
    served = tf.saved_model.load(str(out)).signatures["serving_default"](
        images=tf.constant([open(p, "rb").read() for p in paths]))
    assert [c.decode() for c in served["captions"].numpy()] == [captions[p]["caption"] for p in paths]
    np.testing.assert_allclose(served["log_probs"].numpy(), [captions[p]["log_prob"] for p in paths], atol=1e-3)

    rows = _bulk_rows(capsys, image_ensemble_dir, str(tmp_path / "images" / "*.png"), str(tmp_path / "bulk"),
                      "--beam-size", "2", "--length-penalty", "0.7")
    assert {p: r["caption"] for p, r in rows.items()} == {p: captions[p]["caption"] for p in paths}
    assert {r["model_version"] for r in rows.values()} == {ens.model_version}
