"""``captionbeam features`` end to end on the DirectRunner: records read back with tf.data and the ``tfrecord``
package, dead letters for every bad file, counts that add up, multi-process equals single-process, re-runs
give the same records, the GCS emulator, a user .keras model, and flags that fail fast.

Tiny inputs: 32x32 MobileNet with seeded random weights (``--weights none``)."""
import contextlib
import hashlib
import io
import json
import os

import numpy as np
import pytest

from captionbeam.launch.cli import main as cli
from captionbeam.model import records
from captionbeam.model.encoders import build_encoder
from captionbeam.pipelines.deadletter import read_dead_letters
from captionbeam.pipelines.images import load_image
from tests.pipelines.test_images import (make_16bit_png, make_bomb_png, make_cmyk_jpeg, make_corrupt, make_exif_rotated_jpeg,
                               make_gray_jpeg, make_palette_png, make_rgb_jpeg, make_rgba_png, make_truncated_jpeg)

ENCODER = ["--encoder", "mobilenet", "--weights", "none", "--image-size", "32", "--batch-size", "4"]
CLEAN = {f"img_{i}.jpg": (i, (40 + 8 * i, 36 + 4 * (i % 3))) for i in range(5)}
ODD_GOOD = {"cmyk.jpg": make_cmyk_jpeg, "rgba.png": make_rgba_png, "sixteen.png": make_16bit_png,
            "palette.png": make_palette_png, "gray.jpg": make_gray_jpeg, "exif_rotated.jpg": make_exif_rotated_jpeg}
BAD = {"corrupt.jpg": ("NotAnImageError", make_corrupt), "truncated.jpg": ("TruncatedImageError", make_truncated_jpeg),
       "empty.jpg": ("EmptyImageError", lambda: b""), "bomb.png": ("DecompressionBombError", make_bomb_png)}



def MIXED_GLOBS(inputs):  # noqa: N802 - a constant that needs the fixture
    return [str(inputs / "mixed" / "*"), str(inputs / "dup" / "*.jpg"), str(inputs / "mixed" / "img_*.jpg")]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("features_inputs")
    clean, mixed = root / "clean", root / "mixed"
    clean.mkdir()
    mixed.mkdir()
    for name, (seed, size) in CLEAN.items():
        data = make_rgb_jpeg(seed, size)
        (clean / name).write_bytes(data)
        (mixed / name).write_bytes(data)
    for name, make in ODD_GOOD.items():
        (mixed / name).write_bytes(make())
    for name, (_, make) in BAD.items():
        (mixed / name).write_bytes(make())
    (root / "dup").mkdir()
    (root / "dup" / "img_0.jpg").write_bytes(make_rgb_jpeg(100))  # same image id as mixed/img_0.jpg
    return root


def _run(images, output, *extra):
    return cli(["--log-level", "WARNING", "features", "--images", *images, "--output", str(output), *ENCODER, *extra])


def read_records_tf(output, compression=None):
    import tensorflow as tf
    from captionbeam.pipelines.io import match
    files = match([records.shard_pattern(str(output), records.FEATURES_PREFIX)])
    assert files, f"no feature shards under {output}"
    ds = tf.data.TFRecordDataset(files, compression_type=compression or "")
    rows = [records.parse_feature_example(r.numpy()) for r in ds]
    return {r.image_id: r for r in rows}, len(rows), files


def read_records_tfrecord_package(output, compression=None):
    """With the ``tfrecord`` package, in a TF-free child process (its protos clash with TensorFlow's)."""
    from captionbeam.pipelines.io import match
    from tests.plugins.data import read_with_tfrecord_package
    files = match([records.shard_pattern(str(output), records.FEATURES_PREFIX)])
    rows = read_with_tfrecord_package(files, {"image_id": "byte", "path": "byte", "sha256": "byte", "encoder": "byte",
                                              "feature_shape": "int", "feature": "float"}, compression)
    return {r["image_id"]: r for r in rows}


@pytest.fixture(scope="module")
def clean_run(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean_out")
    assert _run([str(inputs / "clean" / "*.jpg")], out) == 0
    return out


@pytest.fixture(scope="module")
def mixed_run(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed_out")
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        assert _run(MIXED_GLOBS(inputs), out, "--num-shards", "2") == 0
    (out.parent / f"{out.name}.summary.txt").write_text(summary.getvalue())
    return out


def test_clean_run_records(inputs, clean_run, capsys):
    spec = records.FeaturesSpec.from_json((clean_run / "features_spec.json").read_text())
    assert (spec.encoder, spec.feature_shape, spec.image_size, spec.weights) == ("mobilenet", [1024], [32, 32], "none")
    assert spec.preprocessing == "keras.applications.mobilenet.preprocess_input (mode tf)"
    assert (spec.count, spec.dead_letters, spec.files_matched) == (5, 0, 5)
    assert read_dead_letters(str(clean_run)) == []
    assert list((clean_run / "dead_letters").glob("dead_letters-*.jsonl"))  # written, empty

    by_tf, n, files = read_records_tf(clean_run)
    assert n == 5 and set(by_tf) == {os.path.splitext(k)[0] for k in CLEAN}
    assert all(os.path.basename(f).startswith("features-") and f.endswith(".tfrecord") for f in files)
    encoder = build_encoder("mobilenet", "none", 32)
    for image_id, r in by_tf.items():
        path = inputs / "clean" / f"{image_id}.jpg"
        data = path.read_bytes()
        assert r.path == str(path) and r.encoder == "mobilenet"
        assert r.sha256 == hashlib.sha256(data).hexdigest()
        assert r.feature.shape == (1024,) and r.feature.dtype == np.float32
        expected = encoder.encode(load_image(data, 32))[0]
        np.testing.assert_allclose(r.feature, expected, rtol=1e-4, atol=1e-6)

    by_pkg = read_records_tfrecord_package(clean_run)
    assert set(by_pkg) == set(by_tf)
    for image_id, ex in by_pkg.items():
        assert list(ex["feature_shape"]) == [1024] and ex["encoder"] == "mobilenet"
        assert ex["sha256"] == by_tf[image_id].sha256 and ex["path"] == by_tf[image_id].path
        assert np.array_equal(np.asarray(ex["feature"], np.float32), by_tf[image_id].feature)


def test_ids_sidecar_names_every_record(clean_run, mixed_run):
    """ids/ids-*.jsonl: one {"image_id", "path", "sha256"} line per feature record, none per dead letter."""
    from captionbeam.pipelines.features import read_feature_ids
    for out in (clean_run, mixed_run):
        by_tf, n, _ = read_records_tf(out)
        rows = read_feature_ids(str(out))
        assert len(rows) == n
        assert sorted((r["image_id"], r["path"], r["sha256"]) for r in rows) == sorted(
            (r.image_id, r.path, r.sha256) for r in _by_path(out).values())


def test_bad_files_become_dead_letters_and_counts_add_up(inputs, mixed_run):
    dead = read_dead_letters(str(mixed_run))
    assert {os.path.basename(d.path): d.error for d in dead} == {k: v[0] for k, v in BAD.items()}
    assert all(d.stage == "decode" and d.message for d in dead)
    by_tf, n, files = read_records_tf(mixed_run)
    good = {os.path.splitext(k)[0] for k in list(CLEAN) + list(ODD_GOOD)}
    assert set(by_tf) == good and n == len(good) + 1  # + dup/img_0.jpg, same id as mixed/img_0.jpg
    assert len(files) == 2 and all(f.endswith("-of-00002.tfrecord") for f in files)
    spec = records.FeaturesSpec.from_json((mixed_run / "features_spec.json").read_text())
    # files matched by two globs (mixed/* and mixed/img_*.jpg) are read once
    matched = {str(p) for p in (inputs / "mixed").iterdir()} | {str(inputs / "dup" / "img_0.jpg")}
    assert (spec.count, spec.dead_letters, spec.files_matched) == (len(good) + 1, len(BAD), len(matched))
    assert spec.duplicate_image_ids == ["img_0"] and spec.duplicate_image_id_count == 1
    # every matched file is in exactly one of the two outputs
    import tensorflow as tf
    paths = [records.parse_feature_example(r.numpy()).path for r in tf.data.TFRecordDataset(files)]
    assert len(paths) == len(set(paths))
    assert set(paths) | {d.path for d in dead} == matched and not set(paths) & {d.path for d in dead}


def test_summary_is_printed(mixed_run):
    out = (mixed_run.parent / f"{mixed_run.name}.summary.txt").read_text()
    good = len(CLEAN) + len(ODD_GOOD) + 1
    assert f"{good} images encoded" in out and f"{len(BAD)} dead letters" in out
    assert f"{good + len(BAD)} files in all" in out and f"dead letters by stage: decode {len(BAD)}" in out
    assert "images/s" in out


def test_rerun_gives_the_same_records(inputs, clean_run, tmp_path):
    assert _run([str(inputs / "clean" / "*.jpg")], tmp_path) == 0
    first, _, _ = read_records_tf(clean_run)
    second, _, _ = read_records_tf(tmp_path)
    assert set(first) == set(second)
    for k in first:
        a, b = first[k], second[k]
        assert (a.path, a.sha256, a.encoder) == (b.path, b.sha256, b.encoder)
        assert np.array_equal(a.feature, b.feature)


def test_rerun_into_the_same_output_needs_overwrite(inputs, clean_run, capsys):
    assert _run([str(inputs / "clean" / "*.jpg")], clean_run) == 2
    assert "--overwrite" in capsys.readouterr().err


def _by_path(output):
    import tensorflow as tf
    _, _, files = read_records_tf(output)
    rows = [records.parse_feature_example(r.numpy()) for r in tf.data.TFRecordDataset(files)]
    return {r.path: r for r in rows}


def test_multi_process_equals_single_process(inputs, mixed_run, tmp_path):
    assert _run(MIXED_GLOBS(inputs), tmp_path, "--direct_running_mode=multi_processing",
                "--direct_num_workers=2") == 0
    single, multi = _by_path(mixed_run), _by_path(tmp_path)
    assert set(single) == set(multi) and len(single) == len(CLEAN) + len(ODD_GOOD) + 1
    for k in single:
        assert (single[k].image_id, single[k].sha256) == (multi[k].image_id, multi[k].sha256)
        np.testing.assert_allclose(multi[k].feature, single[k].feature, rtol=1e-4, atol=1e-6)
    assert read_dead_letters(str(tmp_path)) == read_dead_letters(str(mixed_run))


def test_gcs_input_and_output(inputs, gcs_bucket, tmp_path):
    src = gcs_bucket.upload_dir(str(inputs / "mixed"), "raw")
    out = f"{gcs_bucket.url}/features"
    images = [f"{src}/img_*.jpg", f"{src}/rgba.png", f"{src}/empty.jpg"]
    assert _run(images, out, "--compress") == 0
    keys = gcs_bucket.keys("features/")
    shards = [k for k in keys if k.startswith("features/features-") and k.endswith(".tfrecord")]
    assert shards and "features/features_spec.json" in keys
    spec = records.FeaturesSpec.from_json(gcs_bucket.read("features/features_spec.json").decode())
    assert (spec.count, spec.dead_letters, spec.compression) == (6, 1, "GZIP")
    import gzip

    import tensorflow as tf
    ids = set()
    for k in shards:
        raw = gzip.decompress(gcs_bucket.read(k))
        local = str(tmp_path / os.path.basename(k))
        with open(local, "wb") as f:
            f.write(raw)
        for rec in tf.data.TFRecordDataset([local]):
            r = records.parse_feature_example(rec.numpy())
            assert r.path.startswith(f"{src}/") and r.feature.shape == (1024,)
            ids.add(r.image_id)
    assert ids == {os.path.splitext(k)[0] for k in CLEAN} | {"rgba"}
    dead = [json.loads(line) for k in keys if k.startswith("features/dead_letters/")
            for line in gcs_bucket.read(k).decode().splitlines() if line]
    assert dead == [{"path": f"{src}/empty.jpg", "error": "EmptyImageError", "message": "zero-byte file",
                     "stage": "decode"}]


def test_user_keras_model_encoder(inputs, tmp_path):
    import keras
    inp = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(3, 3, strides=2, kernel_initializer=keras.initializers.GlorotUniform(seed=3))(inp)
    model = keras.Model(inp, keras.layers.Flatten()(x))
    path = str(tmp_path / "user.keras")
    model.save(path)
    out = tmp_path / "out"
    assert cli(["--log-level", "WARNING", "features", "--images", str(inputs / "clean" / "img_[01].jpg"),
                "--output", str(out), "--encoder", path, "--preprocessing", "tf"]) == 0
    by_tf, n, _ = read_records_tf(out)
    assert n == 2
    for image_id, r in by_tf.items():
        image = load_image((inputs / "clean" / f"{image_id}.jpg").read_bytes(), 24)
        expected = model.predict(image[None].astype(np.float32) / 127.5 - 1.0, verbose=0)[0]
        assert r.encoder == "user.keras"
        np.testing.assert_allclose(r.feature, expected, rtol=1e-4, atol=1e-5)
    spec = records.FeaturesSpec.from_json((out / "features_spec.json").read_text())
    assert spec.feature_shape == [11 * 11 * 3] and spec.image_size == [24, 24] and spec.preprocessing == "tf"


@pytest.mark.parametrize("argv,flag", [
    (["--encoder", "nope"], "--encoder"),
    (["--encoder", "mobilenet", "--weights", "/no/such.h5"], "--weights"),
    (["--encoder", "mobilenet", "--image-size", "-1"], "--image-size"),
    (["--encoder", "mobilenet", "--batch-size", "0"], "--batch-size"),
    (["--encoder", "mobilenet", "--weights", "none", "--image-size", "32", "--no_such_beam_flag=1"], "--no_such_beam_flag"),
])
def test_bad_flags_fail_fast_naming_the_flag(inputs, tmp_path, capsys, argv, flag):
    try:
        rc = cli(["features", "--images", str(inputs / "clean" / "*.jpg"), "--output", str(tmp_path), *argv])
    except SystemExit as e:  # argparse errors
        rc = e.code
    assert rc == 2
    assert flag in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_no_images_matched_fails_fast(tmp_path, capsys):
    rc = cli(["features", "--images", str(tmp_path / "nothing" / "*.jpg"), "--output", str(tmp_path / "out"),
              *ENCODER])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--images" in err and "no file matches" in err
    assert not (tmp_path / "out").exists()
