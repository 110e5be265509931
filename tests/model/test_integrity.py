"""A model dir is self-contained and checked (issue 12 #2, #3, #11): a user ``.keras`` encoder is copied
into it by ``captionbeam train`` (hash recorded), caption / bulk read that copy from any working directory
and refuse a tampered one; a foreign ``vocab.txt`` of the same size is refused naming the file; a missing
``best.weights.h5`` falls back to ``last.weights.h5`` with a warning naming both.

Real components: a real features job (DirectRunner) with a saved Keras encoder, a real training run, the
caption and bulk commands."""
import json
import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from captionbeam.launch.cli import main as cli
from captionbeam.model.encoder_description import BundledFile

SIZE = 16


def _save_encoder(path, seed):
    import keras
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(16)(x)
    keras.Model(inputs, outputs).save(path)
    return str(path)


@pytest.fixture(scope="module")
def bundled(tmp_path_factory, synthetic_data):
    """(model dir trained on features of a user encoder file ``enc.keras``, images, a different file of the
    same name). The features job ran in ``src/`` with a relative ``--encoder enc.keras``."""
    from captionbeam.model.config import ModelConfig, TrainConfig
    from captionbeam.model.train import train
    root = tmp_path_factory.mktemp("integrity")
    src, other = root / "src", root / "other"
    src.mkdir(), other.mkdir()
    _save_encoder(src / "enc.keras", seed=1)
    _save_encoder(other / "enc.keras", seed=2)           # same name, other weights
    images = []
    rng = np.random.default_rng(0)
    for i in range(3):
        p = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(p)
        images.append(str(p))
    cwd = os.getcwd()
    os.chdir(src)
    try:
        rc = cli(["features", "--images", str(root / "img*.png"), "--output", str(root / "features"),
                  "--encoder", "enc.keras", "--batch-size", "4"])
    finally:
        os.chdir(cwd)
    assert rc == 0
    data = root / "data"
    shutil.copytree(synthetic_data, data)
    shutil.copy(root / "features" / "features_spec.json", data / "features_spec.json")
    model_dir = root / "model"
    train(TrainConfig(data=str(data), model_dir=str(model_dir), epochs=1, steps_per_epoch=3, batch_size=16,
                      val_split="none", strategy="one_device", early_stopping_patience=0, shuffle_buffer=100),
          ModelConfig(arch="merge", units=16, embedding_dim=16, dropout=0.1))
    return model_dir, images, src / "enc.keras", other / "enc.keras"


def _encode(path, images):
    from captionbeam.model.captioner import resize_square
    from captionbeam.model.encoders import build_encoder
    enc = build_encoder(str(path), image_size=SIZE)
    batch = np.stack([resize_square(np.asarray(Image.open(p).convert("RGB")), SIZE) for p in images])
    return enc(enc.preprocess(batch))


def test_encoder_is_copied_into_the_model_dir_with_its_hash(bundled):
    from captionbeam.model import records
    from captionbeam.model.hashing import sha256_file
    model_dir, _, original, _ = bundled
    spec = records.FeaturesSpec.load(str(model_dir))
    assert spec.encoder_file == BundledFile(path="encoder/enc.keras", sha256=sha256_file(str(original)))
    assert spec.encoder_spec.kind == "keras-file" and spec.encoder_spec.file_sha256 == spec.encoder_file.sha256
    assert sha256_file(str(model_dir / "encoder" / "enc.keras")) == sha256_file(str(original))


def test_caption_and_bulk_use_the_model_dirs_copy_from_any_directory(bundled, tmp_path, monkeypatch, capsys):
    from captionbeam.model.captioner import Captioner
    model_dir, images, original, other = bundled
    want = _encode(original, images)
    assert not np.allclose(want, _encode(other, images))       # the two files really differ
    # a different enc.keras in the working directory, and the original source replaced too
    monkeypatch.chdir(other.parent)
    shutil.copy(other, original)
    got = Captioner.load(str(model_dir)).encode_images(
        [np.asarray(Image.open(p).convert("RGB")) for p in images])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert cli(["caption", "--model-dir", str(model_dir), *images]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    rc = cli(["bulk", "--images", str(model_dir.parent / "img*.png"), "--model-dir", str(model_dir),
              "--output", str(tmp_path / "bulk"), "--json"])
    out = capsys.readouterr().out
    assert rc == 0 and json.loads(out[out.index("{"):])["counters"]["captioned"] == 3


def test_a_tampered_encoder_copy_is_refused_naming_the_file(bundled, tmp_path, capsys):
    model_dir, images, _, other = bundled
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    shutil.copy(other, copy / "encoder" / "enc.keras")
    capsys.readouterr()
    assert cli(["caption", "--model-dir", str(copy), images[0]]) == 2
    err = capsys.readouterr().err
    assert f"{copy}/encoder/enc.keras: encoder file has SHA-256" in err and "trained with" in err
    os.remove(copy / "encoder" / "enc.keras")
    assert cli(["caption", "--model-dir", str(copy), images[0]]) == 2
    assert "encoder file is missing from the model dir" in capsys.readouterr().err


def test_a_foreign_vocabulary_of_the_same_size_is_refused(bundled, tmp_path, capsys):
    from captionbeam.model.integrity import IntegrityError
    from captionbeam.model.model_dir import load_trained
    from captionbeam.model.vocab import Vocabulary
    model_dir, images, _, _ = bundled
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    tokens = list(Vocabulary.load(str(copy / "vocab.txt")).tokens)
    tokens[4], tokens[5] = tokens[5], tokens[4]               # another model's order: same size
    Vocabulary(tuple(tokens)).save(str(copy / "vocab.txt"))
    with pytest.raises(IntegrityError, match=f"{copy}/vocab.txt: vocabulary has SHA-256"):
        load_trained(str(copy))
    capsys.readouterr()
    assert cli(["caption", "--model-dir", str(copy), images[0]]) == 2
    assert f"{copy}/vocab.txt" in capsys.readouterr().err


def test_missing_best_weights_falls_back_to_last_with_a_warning(bundled, tmp_path, caplog):
    from captionbeam.model.model_dir import weights_path
    model_dir, _, _, _ = bundled
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    os.remove(copy / "best.weights.h5")
    with caplog.at_level(logging.WARNING, logger="captionbeam.model"):
        assert weights_path(str(copy)) == f"{copy}/last.weights.h5"
    assert f"{copy}/best.weights.h5 not found" in caplog.text and f"using {copy}/last.weights.h5" in caplog.text
