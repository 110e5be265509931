"""Session fixtures for the decoding area.

- ``fitted_models``: dict arch -> tiny ``CaptionModel`` fitted in-process for a few hundred steps on
  a synthetic task whose captions have different lengths per image class, so decoding meets ``<end>``
  at different steps (merge and inject read 8-d vectors, attention and transformer a 2x2x8 map).
- ``image_model_dir``: a model directory with a real encoder (``mobilenet`` at 32 px, seeded
  ``--weights none``) and a merge decoder fitted on that encoder's features of a few drawn images:
  for ``caption``, the ``Captioner`` and the export.
- ``exported_model``: ``captionbeam export --beam-size 2`` of ``image_model_dir["merge"]`` (a SavedModel
  directory), for the export and bulk tests.
"""
import json
import os

import numpy as np
import pytest

from captionbeam.model.vocab import RESERVED, Vocabulary

WORDS = ("a", "red", "green", "blue", "dog", "cat", "runs", "on", "grass", "the")
# class k -> caption (different lengths, shared words)
CAPTIONS = (
    "a red dog",
    "a green cat runs",
    "a blue dog runs on the grass",
    "the cat",
)


def decoding_vocab() -> Vocabulary:
    return Vocabulary(RESERVED + WORDS)


def synthetic_batch(feature_shape, n, seed=0):
    """features [n, *feature_shape] with a strong class signal, and class ids."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(len(CAPTIONS), size=n)
    locations = int(np.prod(feature_shape[:-1])) if len(feature_shape) > 1 else 1
    feats = rng.normal(0, 0.2, size=(n, locations, feature_shape[-1])).astype("float32")
    for i, k in enumerate(classes):
        feats[i, k % locations, k] += 3.0
    return feats.reshape((n,) + tuple(feature_shape)), classes


def caption_tokens(vocab, k):
    return vocab.encode(["<start>"] + CAPTIONS[k].split() + ["<end>"])


def fit(model, features, classes, vocab, steps=150, lr=0.03):
    """Teacher-forced cross-entropy with Adam, compiled: enough to learn the class -> caption map."""
    import keras
    import tensorflow as tf
    seqs = [caption_tokens(vocab, int(k)) for k in classes]
    T = max(len(s) for s in seqs)
    tokens = np.zeros([len(seqs), T], np.int32)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)] = s
    inputs, targets = tf.constant(tokens[:, :-1]), tf.constant(tokens[:, 1:])
    feats = tf.constant(features)
    opt = keras.optimizers.Adam(lr)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model((feats, inputs), training=True)
            loss = tf.keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
            mask = tf.cast(targets > 0, tf.float32)
            loss = tf.reduce_sum(loss * mask) / tf.reduce_sum(mask)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for _ in range(steps):
        loss = step()
    return float(loss)


def tiny_config(arch, feature_shape, vocab, **kw):
    from captionbeam.model.config import ModelConfig
    sizes = {"units": 24, "embedding_dim": 16, "attention_units": 12, "dropout": 0.0}
    sizes.update(kw)
    return ModelConfig(arch=arch, vocab_size=len(vocab), max_length=10, feature_shape=list(feature_shape), **sizes)


@pytest.fixture(scope="session")
def fitted_models():
    import keras
    from captionbeam.model.architectures import build_model
    vocab = decoding_vocab()
    out = {}
    from tests.plugins.learning import learning_seed, record_margin
    for arch, shape in (("merge", (8,)), ("inject", (8,)), ("attention", (2, 2, 8)), ("transformer", (2, 2, 8))):
        keras.utils.set_random_seed(learning_seed(0))
        extra = {"units": 32, "heads": 4, "num_layers": 2} if arch == "transformer" else {}
        model = build_model(tiny_config(arch, shape, vocab, **extra))
        feats, classes = synthetic_batch(shape, 64, seed=1)
        loss = fit(model, feats, classes, vocab, lr=0.01 if arch == "transformer" else 0.03)
        record_margin(f"fitted_models[{arch}] 0.3 - loss", 0.3 - loss, 0.0)
        assert loss < 0.3, f"{arch} did not learn the synthetic task (loss {loss:.3f})"
        out[arch] = model
    return out


def draw_images(n, size=48, seed=0):
    """Simple drawn RGB images: class k = a coloured square (red / green / blue / white) on grey."""
    rng = np.random.default_rng(seed)
    colours = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (240, 240, 240)]
    images, classes = [], []
    for i in range(n):
        k = i % len(colours)
        img = np.full((size, size, 3), 100, np.uint8) + rng.integers(0, 20, (size, size, 3), dtype=np.uint8)
        a, b = rng.integers(2, size // 3, 2)
        img[a:a + size // 2, b:b + size // 2] = colours[k]
        images.append(img)
        classes.append(k)
    return images, np.array(classes)


def write_model_dir(directory, model, vocab, spec):
    """config.json + vocab.txt + features_spec.json + best.weights.h5, as ``captionbeam train`` writes them."""
    os.makedirs(directory, exist_ok=True)
    model.config.save(directory)
    vocab.save(os.path.join(directory, "vocab.txt"))
    spec.save(directory)
    model.save_weights(os.path.join(directory, "best.weights.h5"))
    return directory


@pytest.fixture(scope="session")
def image_model_dir(tmp_path_factory):
    """dict arch -> model dir with encoder mobilenet (32 px, seeded weights none); merge decoder fitted on
    drawn images, attention and transformer decoders (mobilenet-conv at 64 px: 2x2x1024) with random weights."""
    import keras
    from captionbeam.model import records
    from captionbeam.model.architectures import build_model
    from captionbeam.model.encoders import build_encoder
    vocab = decoding_vocab()
    root = tmp_path_factory.mktemp("image_models")
    out = {}
    for arch, name, size in (("merge", "mobilenet", 32), ("attention", "mobilenet-conv", 64),
                             ("transformer", "mobilenet-conv", 64)):
        enc = build_encoder(name, weights="none", image_size=size)
        spec = records.FeaturesSpec(encoder=name, feature_shape=list(enc.feature_shape), image_size=[size, size],
                                    preprocessing=enc.preprocessing, weights="none",
                                    encoder_spec=enc.description, resize_method="bilinear")
        keras.utils.set_random_seed(0)
        model = build_model(tiny_config(arch, enc.feature_shape, vocab, encoder_description=enc.description))
        if arch == "merge":
            images, classes = draw_images(24, size=48)
            from captionbeam.model.captioner import resize_square
            batch = np.stack([resize_square(im, size) for im in images])
            feats = enc(enc.preprocess(batch))
            fit(model, feats, classes, vocab, steps=150)
        out[arch] = write_model_dir(str(root / arch), model, vocab, spec)
    return out


@pytest.fixture(scope="session")
def exported_model(image_model_dir, tmp_path_factory):
    """``captionbeam export`` of ``image_model_dir["merge"]`` with beam size 2: a SavedModel directory
    (shared by the export and bulk tests; exporting costs tens of seconds)."""
    from captionbeam.launch.cli import main as cli
    out = tmp_path_factory.mktemp("export") / "saved"
    rc = cli(["export", "--model-dir", image_model_dir["merge"], "--output", str(out), "--beam-size", "2"])
    assert rc == 0
    return out


def write_decoding_data(directory, feature_shape, split="test", n=12, shards=2, seed=7):
    """A ``--data`` dir for the decoding task: vocab.txt, features_spec.json, stats.json, <split> shards.
    Each image has its class caption and a second reference ("<caption> today")."""
    import tensorflow as tf
    from captionbeam.model import records
    vocab = decoding_vocab()
    os.makedirs(directory, exist_ok=True)
    vocab.save(os.path.join(directory, "vocab.txt"))
    records.FeaturesSpec(encoder="synthetic", feature_shape=list(feature_shape), image_size=[32, 32],
                         preprocessing="none", weights="none").save(directory)
    feats, classes = synthetic_batch(tuple(feature_shape), n, seed=seed)
    writers = [tf.io.TFRecordWriter(os.path.join(directory, f"{split}-{i:05d}-of-{shards:05d}.tfrecord"))
               for i in range(shards)]
    truth = {}
    for i, (f, k) in enumerate(zip(feats, classes)):
        iid = f"img_{i:03d}"
        caps = [caption_tokens(vocab, int(k)), vocab.encode(["<start>"] + CAPTIONS[int(k)].split() + ["today", "<end>"])]
        writers[i % shards].write(records.training_example(iid, f, caps))
        truth[iid] = int(k)
    for w in writers:
        w.close()
    with open(os.path.join(directory, "stats.json"), "w") as fh:
        json.dump({"splits": {split: {"images": n, "captions": 2 * n}}}, fh)
    return directory, truth


@pytest.fixture(scope="session")
def decoding_model_dirs(fitted_models, tmp_path_factory):
    """dict arch -> (model dir of the fitted tiny model, data dir with its test split, image id -> class)."""
    from captionbeam.model import records
    vocab = decoding_vocab()
    root = tmp_path_factory.mktemp("decoding_dirs")
    out = {}
    for arch, model in fitted_models.items():
        shape = tuple(model.config.feature_shape)
        spec = records.FeaturesSpec(encoder="synthetic", feature_shape=list(shape), image_size=[32, 32],
                                    preprocessing="none", weights="none")
        model_dir = write_model_dir(str(root / f"{arch}_model"), model, vocab, spec)
        data_dir, truth = write_decoding_data(str(root / f"{arch}_data"), shape)
        out[arch] = (model_dir, data_dir, truth)
    return out


def prefer_unk(model, boost=100.0):
    """A copy of ``model`` whose output bias makes ``<unk>`` its most likely token at every step (the
    small-vocabulary failure of issue 19): decoding must still never emit it."""
    from captionbeam.model.architectures import build_model
    from captionbeam.model.vocab import UNK_ID
    clone = build_model(model.config)
    clone.set_weights(model.get_weights())
    kernel, bias = clone.logits_layer.get_weights()
    bias = bias.copy()
    bias[UNK_ID] += boost
    clone.logits_layer.set_weights([kernel, bias])
    return clone


def perturbed(model, scale=0.3, seed=0):
    """A copy of ``model`` with noise added to every weight: another member for an ensemble."""
    from captionbeam.model.architectures import build_model
    rng = np.random.default_rng(seed)
    clone = build_model(model.config)
    clone.set_weights([w + rng.normal(0, scale * (float(np.std(w)) or 1.0), w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    return clone


def _rewrite_model_dir(source, directory, change):
    """``source`` model dir loaded, ``change(model)`` applied, written to ``directory``."""
    from captionbeam.model.model_dir import load_trained
    model, _, vocab, spec = load_trained(source)
    return write_model_dir(directory, change(model), vocab, spec)


@pytest.fixture(scope="session")
def unk_model_dirs(image_model_dir, decoding_model_dirs, tmp_path_factory):
    """Model dirs whose decoders prefer ``<unk>`` above every word: ``"image"`` (the merge model with the
    mobilenet encoder, for caption / export / bulk) and ``"features"`` (model dir, data dir) for evaluate."""
    root = tmp_path_factory.mktemp("unk_models")
    model_dir, data_dir, _ = decoding_model_dirs["merge"]
    return {"image": _rewrite_model_dir(image_model_dir["merge"], str(root / "image"), prefer_unk),
            "features": (_rewrite_model_dir(model_dir, str(root / "features"), prefer_unk), data_dir)}


@pytest.fixture(scope="session")
def image_ensemble_dir(image_model_dir, tmp_path_factory):
    """An ensemble directory (``ensemble.json``) of the image merge model and a perturbed copy of it (same
    vocabulary and mobilenet encoder), members given relative to the ensemble directory."""
    from captionbeam.model.ensemble import write_ensemble
    root = tmp_path_factory.mktemp("image_ensemble")
    _rewrite_model_dir(image_model_dir["merge"], str(root / "merge_b"), lambda m: perturbed(m, seed=3))
    write_ensemble(str(root / "ensemble"), [image_model_dir["merge"], "../merge_b"])
    return str(root / "ensemble")
