"""What a user does with a registered encoder, step by step, through the command line (in-process
``captionbeam`` calls, real Beam DirectRunner jobs, real training): features -> captions -> train ->
evaluate -> caption -> export -> bulk -> the same bulk again -> new images land -> retrain -> bulk with
the new current model. Each step checks what the user would look at: exit codes, counts, rows, files.

``mobilenet`` at 32 px with ``--weights none`` (seeded, no download, no ../shared) on the procedurally
drawn sample dataset (48 images, plus 12 that land later)."""
import glob
import json
import os
import shutil

import pytest

from tests.plugins.journeys import ENCODER, SIZE, TRAIN_FLAGS
from tests.plugins.journeys import bulk_rows as _bulk_rows
from tests.plugins.journeys import json_of as _json
from tests.plugins.journeys import ok as _ok
from tests.plugins.journeys import run_cli as _run


@pytest.fixture(scope="module")
def sample(journey_sample):
    return journey_sample


def test_journey_with_a_registered_encoder(sample, tmp_path, capsys):
    from captionbeam.launch.retrain.root import ModelRoot
    from captionbeam.model.records import FeaturesSpec
    from captionbeam.pipelines.features import read_feature_ids
    s = sample / "sample"
    images = sorted(glob.glob(str(s / "images" / "*.jpg")))
    split = {name: [l for l in (s / f"{name}.txt").read_text().split() if l] for name in ("train", "dev", "test")}
    assert len(images) == 48 and sum(map(len, split.values())) == 48
    F, D, M, E, B, R = (str(tmp_path / n) for n in ("features", "data", "model", "export", "bulk", "root"))

    # 1. features: one record per image, the encoder described once in features_spec.json
    _ok(capsys, "features", "--images", str(s / "images" / "*.jpg"), "--output", F, "--encoder", ENCODER,
        "--weights", "none", "--image-size", SIZE, "--batch-size", "16")
    spec = FeaturesSpec.load(F)
    assert (spec.count, spec.dead_letters, spec.feature_shape) == (48, 0, [1024])
    enc = spec.encoder_spec
    assert (enc.name, enc.kind, enc.weights, enc.image_size, enc.preprocessing_mode) == \
        (ENCODER, "keras.applications", "none", 32, "tf")
    assert sorted(r["path"] for r in read_feature_ids(F)) == images

    # 2. captions: training records for every split, a vocabulary
    _ok(capsys, "captions", "--captions", str(s / "captions.txt"), "--format", "flickr8k",
        *[a for name in split for a in ("--split", f"{name}={s / (name + '.txt')}")],
        "--features", F, "--output", D, "--min-count", "1")
    stats = json.loads(open(os.path.join(D, "stats.json")).read())
    assert {k: v["images"] for k, v in stats["splits"].items()} == {k: len(v) for k, v in split.items()}
    assert FeaturesSpec.load(D).encoder_spec == enc

    # 3. train: a model dir that records the encoder it reads features of
    _ok(capsys, "train", "--data", D, "--model-dir", M, *TRAIN_FLAGS, "--epochs", "2")
    config = json.loads(open(os.path.join(M, "config.json")).read())
    assert (config["encoder"], config["feature_shape"]) == (ENCODER, [1024])
    assert FeaturesSpec.load(M).encoder_spec == enc

    # 4. evaluate: one prediction per test image, scores printed
    preds = str(tmp_path / "predictions.jsonl")
    report = _json(_ok(capsys, "evaluate", "--model-dir", M, "--data", D, "--split", "test", "--output", preds,
                       "--coco-metrics", "bleu,cider", "--json"))
    assert {"CIDEr", "Bleu_4"} <= set(report["coco"]) and 0 <= report["coco"]["CIDEr"]
    predicted = [json.loads(l) for l in open(preds) if l.strip()]
    assert len(predicted) == len(split["test"]) and all(p["caption"].strip() for p in predicted)

    # 5. caption: new photos through the encoder rebuilt from the model dir's description
    three = images[:3]
    out = _ok(capsys, "caption", "--model-dir", M, "--json", *three)
    captions = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    assert [c["path"] for c in captions] == three and all(c["caption"].strip() for c in captions)

    # 6. export: a SavedModel that captions image bytes itself
    meta = _ok(capsys, "export", "--model-dir", M, "--output", E)
    assert os.path.exists(os.path.join(E, "saved_model.pb")), meta
    exported = json.loads(open(os.path.join(E, "captionbeam_export.json")).read())
    assert (exported["encoder"], exported["preprocessing_mode"], exported["image_size"]) == (ENCODER, "tf", [32, 32])
    import tensorflow as tf
    served = tf.saved_model.load(E).signatures["serving_default"](
        images=tf.constant([open(p, "rb").read() for p in three]))
    assert [bool(v) for v in served["valid"].numpy()] == [True] * 3
    assert all(c.decode().strip() for c in served["captions"].numpy())

    # 7. bulk: one row per image, each naming the model version and the encoder
    bulk = ["bulk", "--images", str(s / "images" / "*.jpg"), "--model-dir", M, "--output", B, "--json"]
    first = _json(_ok(capsys, *bulk))
    rows = _bulk_rows(B)
    assert len(rows) == 48 and sorted(r["path"] for r in rows) == images, first
    assert {r["encoder"] for r in rows} == {ENCODER} and len({r["model_version"] for r in rows}) == 1
    version_1 = rows[0]["model_version"]

    # 8. the same bulk command again: a re-run adds no rows (checked at the end, so the journey goes on)
    rc, out, err = _run(capsys, *bulk)
    rerun_rows = len(_bulk_rows(B))

    # 9. a model root from what the user has; new images land with their captions; retrain
    init = _json(_ok(capsys, "retrain", "--root", R, "--init", "--model-dir", M, "--features", F, "--data", D,
                     "--captions", str(s / "captions.txt"),
                     *[a for name in split for a in ("--split", f"{name}={s / (name + '.txt')}")], "--json"))
    root = ModelRoot(R)
    assert init["status"] == "promoted" and root.current() == "v001"
    landing = sample / "landing"
    attempt = _json(_ok(capsys, "retrain", "--root", R, "--images", str(landing / "*.jpg"),
                        "--captions", str(sample / "landing-captions.txt"), "--epochs", "1", "--batch-size", "16",
                        "--tolerance", "1.0", "--min-drop", "100", "--json"))
    assert (attempt["status"], attempt["new_images"], attempt["featurised"]) == ("promoted", 12, 12), attempt
    assert root.current() == "v002" and attempt["version"] == "v002"
    record = json.loads(open(os.path.join(R, "state", "attempts", f"{attempt['batch']}.json")).read())
    assert record["status"] == "promoted"
    assert FeaturesSpec.load(root.path("features")).encoder_spec == enc
    assert len(read_feature_ids(root.path("features"))) == 60

    # 10. bulk with the new current model, over the old and the landed images
    B2 = str(tmp_path / "bulk-v2")
    _ok(capsys, "bulk", "--images", str(s / "images" / "*.jpg"), str(landing / "*.jpg"),
        "--model-dir", root.current_dir(), "--output", B2, "--json")
    rows = _bulk_rows(B2)
    assert len(rows) == 60 and len({r["path"] for r in rows}) == 60
    assert {r["model_version"] for r in rows} != {version_1} and len({r["model_version"] for r in rows}) == 1

    # the re-run of step 8: same exit code, no duplicated rows
    assert rc == 0, err[-2000:]
    assert rerun_rows == 48, f"re-running the same bulk command wrote {rerun_rows} rows for 48 images"


def _tiny_encoder_file(directory, kind):
    """A tiny image model (32 px -> 8-d) saved as a user's .keras file or converted to .tflite."""
    import keras
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu",
                            kernel_initializer=keras.initializers.GlorotUniform(seed=3))(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    path = os.path.join(directory, f"tiny.{kind}")
    if kind == "keras":
        model.save(path)
    else:
        import tensorflow as tf
        with open(path, "wb") as f:
            f.write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


@pytest.mark.parametrize("kind", ["keras", "tflite"])
def test_journey_with_a_users_model_file(sample, tmp_path, capsys, kind):
    """The same steps with a user's .keras / .tflite encoder: the model dir carries a checked copy of the
    file, caption and bulk use it from anywhere, retrain featurises new images with the root's copy.
    A .tflite encoder cannot be baked into a SavedModel: export says so and what to use instead."""
    from captionbeam.launch.retrain.root import ModelRoot
    from captionbeam.launch.retrain.stages import featurise
    from captionbeam.model.hashing import sha256_file
    from captionbeam.model.records import FeaturesSpec
    s = sample / "sample"
    encoder = _tiny_encoder_file(str(tmp_path), kind)
    F, D, M, B = (str(tmp_path / n) for n in ("features", "data", "model", "bulk"))
    _ok(capsys, "features", "--images", str(s / "images" / "*.jpg"), "--output", F, "--encoder", encoder,
        "--preprocessing", "tf")
    spec = FeaturesSpec.load(F)
    enc = spec.encoder_spec
    assert (spec.count, spec.feature_shape) == (48, [8])
    assert (enc.name, enc.kind, enc.source, enc.file_sha256, enc.preprocessing_mode) == \
        (f"tiny.{kind}", "keras-file" if kind == "keras" else "tflite", encoder, sha256_file(encoder), "tf")
    _ok(capsys, "captions", "--captions", str(s / "captions.txt"), "--format", "flickr8k",
        "--split", f"train={s / 'train.txt'}", "--features", F, "--output", D, "--min-count", "1")
    _ok(capsys, "train", "--data", D, "--model-dir", M, "--val-split", "none", *TRAIN_FLAGS, "--epochs", "1")
    assert sha256_file(os.path.join(M, "encoder", f"tiny.{kind}")) == enc.file_sha256

    # the user's file moves away: caption and bulk use the model dir's copy
    os.rename(encoder, encoder + ".moved")
    images = sorted(glob.glob(str(s / "images" / "*.jpg")))[:6]
    out = _ok(capsys, "caption", "--model-dir", M, "--json", *images[:2])
    assert len([l for l in out.splitlines() if l.startswith("{")]) == 2
    _ok(capsys, "bulk", "--images", *images, "--model-dir", M, "--output", B, "--json")
    rows = _bulk_rows(B)
    assert sorted(r["path"] for r in rows) == images and {r["encoder"] for r in rows} == {f"tiny.{kind}"}

    rc, out, err = _run(capsys, "export", "--model-dir", M, "--output", str(tmp_path / "export"))
    if kind == "keras":
        assert rc == 0 and json.loads(out)["encoder"] == "tiny.keras", err[-2000:]
    else:
        assert rc == 2 and "a .tflite encoder cannot be part of a SavedModel" in err, err[-2000:]

    # retrain's features stage: new images with the root's copy of the file, described the same way
    root = ModelRoot(str(tmp_path / "root"))
    shutil.copytree(F, root.path("features"))
    os.makedirs(root.path("encoder"))
    shutil.copy(os.path.join(M, "encoder", f"tiny.{kind}"), root.path("encoder", f"tiny.{kind}"))
    landed = sorted(glob.glob(str(sample / "landing" / "*.jpg")))[:3]
    new = FeaturesSpec.load(featurise(root, landed, str(tmp_path / "new"), ["--runner=DirectRunner"]))
    assert new.count == 3 and new.encoder_spec.identity() == enc.identity()
    assert new.encoder_spec.source == root.path("encoder", f"tiny.{kind}")


@pytest.mark.parametrize("name", sorted(__import__("captionbeam.model.encoders", fromlist=["REGISTRY"]).REGISTRY))
def test_every_registered_encoder_is_rebuilt_from_its_spec(name, tmp_path):
    """For every encoder of the registry, with each preprocessing override: features_spec.json's
    description (written and read back) gives the features job's flags again, which give the same
    description (what retrain and the captioner rely on). No model is built."""
    from captionbeam.launch.retrain.root import ModelRoot
    from captionbeam.launch.retrain.stages import features_stage
    from captionbeam.model.encoders import REGISTRY, EncoderConfig, config_of, describe
    from captionbeam.model.records import FeaturesSpec
    size = max(REGISTRY[name].min_size, 96)
    for pre in (None, "caffe", "torch", "none", "tf"):
        d = describe(EncoderConfig(name, "none", size, pre)).with_feature_shape([7])
        spec = FeaturesSpec(encoder=d.name, feature_shape=[7], image_size=[size, size], preprocessing=d.preprocessing,
                            weights="none", encoder_spec=d, compression="NONE")
        back = FeaturesSpec.from_json(spec.to_json())
        assert back == spec and describe(config_of(back.encoder_description())).with_feature_shape([7]).identity() \
            == d.identity()
        s = features_stage(ModelRoot(str(tmp_path)), back, ["x/*.jpg"], str(tmp_path / "o"))
        again = describe(s.config.encoder)
        assert again.with_feature_shape([7]).identity() == d.identity(), s.line


def test_specs_written_before_the_description_are_read():
    """features_spec.json of earlier versions (an untyped extra object, or no description at all)."""
    from captionbeam.model.encoders import config_of
    from captionbeam.model.records import FeaturesSpec
    old = {"encoder": "mobilenet", "feature_shape": [1024], "image_size": [32, 32], "weights": "none", "count": 3,
           "preprocessing": "keras.applications.mobilenet.preprocess_input (mode tf)", "dead_letters": 0,
           "extra": {"compression": "GZIP", "resize_method": "nearest", "encoder_spec": {
               "encoder": "mobilenet", "kind": "keras.applications", "feature_shape": [1024], "image_size": [32, 32],
               "preprocessing": "keras.applications.mobilenet.preprocess_input (mode tf)", "weights": "none",
               "input_dtype": "float32", "family": "mobilenet", "output": "pooled", "layer": "",
               "preprocessing_mode": "caffe"}}}
    spec = FeaturesSpec.from_json(json.dumps(old))
    assert (spec.compression, spec.resize_method, spec.count) == ("GZIP", "nearest", 3)
    d = spec.encoder_description()
    assert (d.name, d.image_size, d.feature_shape, d.preprocessing_mode) == ("mobilenet", 32, (1024,), "caffe")
    assert config_of(d) == __import__("captionbeam.model.encoders", fromlist=["x"]).EncoderConfig(
        "mobilenet", "none", 32, "caffe")
    bare = FeaturesSpec.from_json(json.dumps({k: v for k, v in old.items() if k != "extra"}))
    assert bare.encoder_description().preprocessing_mode == "tf" and config_of(bare.encoder_description()).preprocessing is None
    keras_file = FeaturesSpec(encoder="/models/enc.keras", feature_shape=[8], image_size=[16, 16], preprocessing="none")
    d = keras_file.encoder_description()
    assert (d.kind, d.name, d.source, config_of(d).name) == ("keras-file", "enc.keras", "/models/enc.keras",
                                                             "/models/enc.keras")


def _rows_anywhere(output):
    import captionbeam.pipelines.io as pio
    rows = []
    for f in pio.match([pio.join(output, "captions", "captions-*")]):
        rows += [json.loads(line) for line in pio.read_text(f).splitlines() if line.strip()]
    return rows


def test_journey_on_gcs(sample, gcs_bucket, tmp_path, capsys):
    """The journey's Beam side on gs:// (the GCS emulator): photos, features, training records, bulk output
    and the retrain root in the bucket. Training, caption and the bulk workers' model dir are local
    copies (TensorFlow's own gs:// client cannot be pointed at the emulator; retrain stages its model dirs
    the same way)."""
    import captionbeam.pipelines.io as pio
    from captionbeam.launch.retrain.root import ModelRoot
    from captionbeam.launch.staging import copy_tree
    from captionbeam.model.records import FeaturesSpec
    s = sample / "sample"
    b = gcs_bucket.url
    gcs_bucket.upload_dir(str(s / "images"), "photos")
    caps = gcs_bucket.upload_bytes("captions.txt", (s / "captions.txt").read_bytes())
    splits = {n: gcs_bucket.upload_bytes(f"{n}.txt", (s / f"{n}.txt").read_bytes()) for n in ("train", "dev", "test")}
    F, D, B, R = (f"{b}/{n}" for n in ("features", "data", "bulk", "root"))
    local_data, M = str(tmp_path / "data"), str(tmp_path / "model")

    _ok(capsys, "features", "--images", f"{b}/photos/*.jpg", "--output", F, "--encoder", ENCODER, "--weights", "none",
        "--image-size", SIZE, "--batch-size", "16")
    spec = FeaturesSpec.from_json(pio.read_text(f"{F}/features_spec.json"))
    assert (spec.count, spec.encoder_spec.name, spec.encoder_spec.image_size) == (48, ENCODER, 32)
    split_flags = [a for n, url in splits.items() for a in ("--split", f"{n}={url}")]
    _ok(capsys, "captions", "--captions", caps, "--format", "flickr8k", *split_flags, "--features", F, "--output", D,
        "--min-count", "1")
    assert FeaturesSpec.from_json(pio.read_text(f"{D}/features_spec.json")).encoder_spec == spec.encoder_spec
    copy_tree(D, local_data)
    _ok(capsys, "train", "--data", local_data, "--model-dir", M, *TRAIN_FLAGS, "--epochs", "1")

    bulk = ["bulk", "--images", f"{b}/photos/*.jpg", "--model-dir", M, "--output", B, "--json"]
    _ok(capsys, *bulk)
    rows = _rows_anywhere(B)
    assert len(rows) == 48 and all(r["path"].startswith(f"{b}/photos/") for r in rows)
    rc, _, err = _run(capsys, *bulk)
    rerun_rows = len(_rows_anywhere(B))

    _ok(capsys, "retrain", "--root", R, "--init", "--model-dir", M, "--features", F, "--data", D, "--captions", caps,
        *split_flags, "--json")
    gcs_bucket.upload_dir(str(sample / "landing"), "landing")
    new_caps = gcs_bucket.upload_bytes("landing-captions.txt", (sample / "landing-captions.txt").read_bytes())
    attempt = _json(_ok(capsys, "retrain", "--root", R, "--images", f"{b}/landing/*.jpg", "--captions", new_caps,
                        "--epochs", "1", "--batch-size", "16", "--tolerance", "1.0", "--min-drop", "100", "--json"))
    root = ModelRoot(R)
    assert (attempt["status"], attempt["featurised"], root.current()) == ("promoted", 12, "v002"), attempt
    assert f"root/state/attempts/{attempt['batch']}.json" in gcs_bucket.keys("root/state/attempts/")
    current = str(tmp_path / "current")
    copy_tree(root.current_dir(), current)
    B2 = f"{b}/bulk-v2"
    _ok(capsys, "bulk", "--images", f"{b}/landing/*.jpg", "--model-dir", current, "--output", B2, "--json")
    rows2 = _rows_anywhere(B2)
    assert len(rows2) == 12 and {r["model_version"] for r in rows2}.isdisjoint({r["model_version"] for r in rows})

    assert rc == 0, err[-2000:]
    assert rerun_rows == 48, f"re-running the same bulk command wrote {rerun_rows} rows for 48 images"
