"""An ensemble across encoders, as a user builds and ships one: members trained on two registered encoders'
features (``mobilenet-conv`` and ``mobilenet_v2-conv``) -> ``captionbeam ensemble`` says it reads their
composite -> ``captionbeam features --encoder mobilenet-conv+mobilenet_v2-conv`` + ``captions`` make the data
evaluate reads -> evaluate, caption, bulk and the one-SavedModel export give the same caption for each image,
and those are the captions of the members' averaged log-probabilities over each encoder's own features.

Seeded ``--weights none`` encoders at 64 px (2x2 maps) and seeded untrained transformer members (no download,
no ../shared): the check is that every path computes the same thing, not caption quality."""
import glob
import json
import os

import numpy as np

from tests.plugins.data import make_sample_records
from tests.plugins.decoding import tiny_config, write_model_dir
from tests.plugins.journeys import bulk_rows, ok

PARTS = ("mobilenet-conv", "mobilenet_v2-conv")
COMPOSITE = "+".join(PARTS)
SIZE = 64


def _member(directory, part, vocab, seed):
    """A model dir reading ``part``'s features (what ``captionbeam train`` on that encoder's data writes)."""
    import keras
    from captionbeam.model import records
    from captionbeam.model.architectures import build_model
    from captionbeam.model.encoders import EncoderConfig, build_encoder, describe
    shape = build_encoder(part, "none", SIZE).feature_shape
    d = describe(EncoderConfig(part, "none", SIZE)).with_feature_shape(shape)
    spec = records.FeaturesSpec(encoder=part, feature_shape=list(shape), image_size=[SIZE, SIZE],
                                preprocessing=d.preprocessing, weights="none", encoder_spec=d, resize_method="bilinear")
    keras.utils.set_random_seed(seed)
    model = build_model(tiny_config("transformer", shape, vocab, units=32, heads=4, num_layers=1,
                                    encoder_description=d))
    return write_model_dir(str(directory), model, vocab, spec)


def test_an_ensemble_across_encoders_end_to_end(sample_dir, tmp_path, capsys):
    import tensorflow as tf
    from captionbeam.model.captioner import Captioner
    from captionbeam.model.decode import Decoder
    from captionbeam.model.encoders import build_encoder
    from captionbeam.model.ensemble import Ensemble
    from captionbeam.model.model_dir import load_trained
    from captionbeam.model.vocab import Vocabulary

    data = make_sample_records(sample_dir, str(tmp_path / "records"), COMPOSITE, SIZE)
    assert data.feature_shape == [2, 2, 1024 + 1280]
    vocab = Vocabulary.load(data.vocab_path)
    members = [_member(tmp_path / part, part, vocab, seed) for seed, part in enumerate(PARTS)]

    E = str(tmp_path / "ensemble")
    out = ok(capsys, "ensemble", "--member", members[0], "--member", members[1], "--output", E)
    assert f"it reads {COMPOSITE} features (2x2x2304)" in out and f"--encoder {COMPOSITE}" in out

    # evaluate on the composite's records
    preds = tmp_path / "eval.jsonl"
    ok(capsys, "evaluate", "--model-dir", E, "--data", str(data), "--split", "test", "--output", str(preds),
       "--json", "--coco-metrics", "bleu")
    evaluated = {r["image_id"]: r["caption"] for r in map(json.loads, preds.read_text().splitlines())}
    test_ids = data.split_ids("test")
    assert sorted(evaluated) == sorted(test_ids)
    assert len(set(evaluated.values())) > 1, "every image got one caption: the paths below could not disagree"
    images = [os.path.join(sample_dir, "images", f"{i}.jpg") for i in test_ids]

    # caption and bulk run the composite encoder on each image: the captions evaluate gave
    captioned = {json.loads(l)["path"]: json.loads(l)["caption"]
                 for l in ok(capsys, "caption", "--model-dir", E, "--json", *images).splitlines()}
    assert {os.path.basename(p)[:-4]: c for p, c in captioned.items()} == evaluated
    ok(capsys, "bulk", "--images", os.path.join(sample_dir, "images", "*.jpg"), "--model-dir", E,
       "--output", str(tmp_path / "bulk"), "--batch-size", "8")
    rows = {os.path.basename(r["path"])[:-4]: r["caption"] for r in bulk_rows(str(tmp_path / "bulk"))}
    assert {i: rows[i] for i in test_ids} == evaluated

    # one SavedModel holds both encoders and both members
    meta = json.loads(ok(capsys, "export", "--model-dir", E, "--output", str(tmp_path / "export")))
    assert meta["encoder"] == COMPOSITE and meta["members"] == members
    served = tf.saved_model.load(str(tmp_path / "export")).signatures["serving_default"](
        images=tf.constant([open(p, "rb").read() for p in images]))
    assert [c.decode() for c in served["captions"].numpy()] == [evaluated[i] for i in test_ids]

    # and each member saw its own encoder's features: the same captions from the parts run separately
    cap = Captioner.load(E)
    pixels = cap.prepare([np.asarray(__import__("PIL.Image").Image.open(p).convert("RGB")) for p in images])
    parts = [build_encoder(p, "none", SIZE).encode(pixels) for p in PARTS]
    models = [load_trained(m)[0] for m in members]
    by_hand = Decoder(Ensemble(models, slices=[(0, 1024), (1024, 2304)], feature_shape=[2, 2, 2304]),
                      max_length=cap.max_length)(np.concatenate(parts, axis=-1))
    assert by_hand.captions(vocab) == [evaluated[i] for i in test_ids]
    assert glob.glob(str(tmp_path / "bulk" / "captions" / "captions-*"))
