"""Session fixtures for the training area.

``synthetic_data`` / ``synthetic_map_data``: small ``--data`` directories (``captionbeam captions``
layout) whose captions depend on the features (each image has a class; its captions name the class's
colour and animal, plus a random verb), so learning is real and measurable.

``trained_model_dirs``: dict arch -> model dir of a tiny model trained for a few seconds (merge and
inject on vector features, attention and transformer on a 2×2 map), for decoding / export tests.
"""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COLOURS = ["red", "green", "blue", "black", "white", "brown"]
ANIMALS = ["dog", "cat", "bird", "horse", "fish", "cow"]
VERBS = ["runs", "sits", "jumps"]


def synthetic_vocabulary():
    from captionbeam.model.vocab import RESERVED, Vocabulary
    return Vocabulary(RESERVED + ("a", "the", "is", "on", "grass") + tuple(COLOURS) + tuple(ANIMALS) + tuple(VERBS))


def write_synthetic_data(directory, feature_shape=(16,), images=(("train", 96, 3), ("dev", 24, 1)),
                         classes=6, seed=0, captions_per_image=3, encoder="synthetic"):
    """Write a ``--data`` dir: ``vocab.txt``, ``features_spec.json``, ``stats.json`` and sharded records.

    ``images``: (split, number of images, number of shards). Class k: feature has a strong signal on
    channel k (at location k mod L for a map); captions "a <colour k> <animal k> <verb> [on the grass]".
    """
    import tensorflow as tf
    from captionbeam.model import records
    os.makedirs(directory, exist_ok=True)
    vocab = synthetic_vocabulary()
    vocab.save(os.path.join(directory, "vocab.txt"))
    records.FeaturesSpec(encoder=encoder, feature_shape=list(feature_shape), image_size=[32, 32],
                         preprocessing="none", weights="none").save(directory)
    rng = np.random.default_rng(seed)
    stats = {"splits": {}}
    locations = int(np.prod(feature_shape[:-1])) if len(feature_shape) > 1 else 1
    channels = feature_shape[-1]
    for split, n, shards in images:
        writers = [tf.io.TFRecordWriter(os.path.join(directory, f"{split}-{i:05d}-of-{shards:05d}.tfrecord"))
                   for i in range(shards)]
        count = 0
        for i in range(n):
            k = int(rng.integers(classes))
            feat = rng.normal(0, 0.3, size=(locations, channels)).astype("float32")
            feat[k % locations, k % channels] += 3.0
            caps = []
            for _ in range(captions_per_image):
                words = ["a", COLOURS[k], ANIMALS[k], VERBS[int(rng.integers(len(VERBS)))]]
                if rng.random() < 0.5:
                    words += ["on", "the", "grass"]
                caps.append(vocab.encode(["<start>"] + words + ["<end>"]))
                count += 1
            writers[i % shards].write(records.training_example(f"{split}_{i}", feat.reshape(feature_shape), caps))
        for w in writers:
            w.close()
        stats["splits"][split] = {"images": n, "captions": count}
    with open(os.path.join(directory, "stats.json"), "w") as f:
        json.dump(stats, f)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_env(**extra):
    env = dict(os.environ)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow", "PYTHONUNBUFFERED": "1",
                "CUDA_VISIBLE_DEVICES": "", "TF_NUM_INTEROP_THREADS": "2", "TF_NUM_INTRAOP_THREADS": "1"})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def train_command(data, model_dir, *flags):
    """``captionbeam train`` as a subprocess argv (same interpreter)."""
    return [sys.executable, "-m", "captionbeam.launch.cli", "train", "--data", str(data), "--model-dir", str(model_dir),
            *[str(f) for f in flags]]


TINY = ["--units", "32", "--embedding-dim", "32", "--attention-units", "16", "--log-every", "5"]


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    from tests.plugins.learning import learning_seed
    return write_synthetic_data(str(tmp_path_factory.mktemp("synthetic_vec")), feature_shape=(16,),
                                seed=learning_seed(0))


@pytest.fixture(scope="session")
def synthetic_map_data(tmp_path_factory):
    from tests.plugins.learning import learning_seed
    return write_synthetic_data(str(tmp_path_factory.mktemp("synthetic_map")), feature_shape=(2, 2, 16),
                                seed=learning_seed(0))


def _train_tiny(data, model_dir, arch, epochs=3, steps=18):
    from captionbeam.model.config import ModelConfig, TrainConfig
    from tests.plugins.learning import learning_seed
    from captionbeam.model.train import train
    train(TrainConfig(data=str(data), model_dir=str(model_dir), epochs=epochs, steps_per_epoch=steps, batch_size=32,
                      learning_rate=0.003 if arch == "transformer" else 0.01, log_every=10, checkpoint_every=50,
                      shuffle_buffer=500, early_stopping_patience=0, strategy="one_device", seed=learning_seed(1)),
          ModelConfig(arch=arch, units=32, embedding_dim=32, attention_units=16, dropout=0.1,
                      num_layers=2 if arch == "transformer" else 1))
    return str(model_dir)


@pytest.fixture(scope="session")
def trained_model_dirs(tmp_path_factory, sample_records, sample_records_conv):
    """dict arch -> model dir of a tiny model (32 units) trained in-process for 4 x 30 steps on the
    captionbeam sample dataset's records (merge / inject: pooled mobilenet vectors; attention and
    transformer (2 blocks): the 2x2x1024 mobilenet-conv map). Encoders have random weights, so the
    captions are learnt mostly as a language model; use ``synthetic_model_dir`` where the image must
    matter."""
    root = tmp_path_factory.mktemp("trained")
    return {arch: _train_tiny(data, root / arch, arch, epochs=4, steps=30)
            for arch, data in (("merge", sample_records), ("inject", sample_records),
                               ("attention", sample_records_conv), ("transformer", sample_records_conv))}


@pytest.fixture(scope="session")
def synthetic_model_dir(tmp_path_factory, synthetic_data):
    """A tiny merge model trained on ``synthetic_data``: its captions name the image's class."""
    return _train_tiny(synthetic_data, tmp_path_factory.mktemp("trained_synthetic") / "merge", "merge")
