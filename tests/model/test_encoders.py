"""model.encoders: preprocessing identical to keras.applications', shapes, validation, user Keras models and
TFLite files. Small sizes and --weights none throughout (no download, no ../shared)."""
import importlib
import os

import numpy as np
import pytest

from captionbeam.model.encoders import (REGISTRY, EncoderConfig, EncoderError, TFLiteEncoder, build_encoder, describe,
                            preprocess_function, preprocess_numpy, preprocess_tf, validate_config)


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_keras_model(tmp_path_factory):
    """A tiny image model saved as .keras and .h5, with its predictions on a fixed batch."""
    import keras
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed=1))(inputs)
    outputs = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, outputs)
    d = tmp_path_factory.mktemp("tiny_model")
    paths = {"keras": str(d / "tiny.keras"), "h5": str(d / "tiny.h5")}
    model.save(paths["keras"])
    model.save(paths["h5"])
    images = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    return model, paths, images


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_preprocessing_is_keras_applications_own(name, batch):
    spec = REGISTRY[name]
    module = importlib.import_module(f"keras.applications.{spec.module}")
    expected = np.asarray(module.preprocess_input(batch.astype(np.float32)), np.float32)
    ours = preprocess_function(name)(batch)
    assert ours.dtype == np.float32
    assert np.array_equal(ours, expected)
    # the documented mode table and the TF-ops version agree with keras too
    np.testing.assert_allclose(preprocess_numpy(batch, spec.mode), expected, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(np.asarray(preprocess_tf(batch, name)), expected, rtol=1e-6, atol=1e-4)
    assert batch.dtype == np.uint8  # the input batch is never modified


def test_modes_differ_where_they_should(batch):
    caffe, tf_mode = preprocess_numpy(batch, "caffe"), preprocess_numpy(batch, "tf")
    assert tf_mode.min() >= -1 and tf_mode.max() <= 1
    assert np.allclose(caffe[..., 0], batch[..., 2] - 103.939, atol=1e-4)  # BGR order, mean subtracted
    torch = preprocess_numpy(batch, "torch")
    assert np.allclose(torch[..., 0], (batch[..., 0] / 255 - 0.485) / 0.229, atol=1e-5)
    with pytest.raises(EncoderError):
        preprocess_numpy(batch, "bogus")


@pytest.mark.parametrize("name,size,shape", [
    ("mobilenet", 32, (1024,)),
    ("mobilenet-conv", 64, (2, 2, 1024)),
    ("vgg16-conv", 32, (2, 2, 512)),
    ("vgg16", 32, (4096,)),
])
def test_feature_shapes(name, size, shape):
    enc = build_encoder(name, "none", size)
    images = np.random.default_rng(2).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    feats = enc.encode(images)
    assert enc.feature_shape == shape and feats.shape == (2,) + shape and feats.dtype == np.float32
    assert np.isfinite(feats).all() and np.abs(feats).max() > 0
    d = enc.description
    assert d.feature_shape == shape and d.image_size == size and d.name == name and d.kind == "keras.applications"
    assert d.preprocessing == REGISTRY[name].preprocessing_name and d.preprocessing_mode == REGISTRY[name].mode


def test_weights_none_is_seeded_and_encoder_preprocess_is_keras(batch):
    a, b = build_encoder("mobilenet", "none", 32), build_encoder("mobilenet", "none", 32)
    fa, fb = a.encode(batch), b.encode(batch)
    assert np.array_equal(fa, fb)  # same weights in every process / run
    assert np.abs(fa[0] - fa[1]).max() > 0  # and image-dependent
    from keras.applications import mobilenet
    assert np.array_equal(a.preprocess(batch), mobilenet.preprocess_input(batch.astype(np.float32)))
    with pytest.raises(EncoderError, match="expected images of shape"):
        a.encode(batch[:, :16, :16])


def test_describe_needs_no_model():
    d = describe(EncoderConfig("vgg16"))
    assert d.name == "vgg16" and d.image_size == 224 and d.layer == "fc2" and d.feature_shape == ()
    assert d.preprocessing == "keras.applications.vgg16.preprocess_input (mode caffe)" and d.preprocessing_mode == "caffe"
    assert describe(EncoderConfig("inception_v3", "none")).image_size == 299


@pytest.mark.parametrize("config,flag", [
    (EncoderConfig("nope"), "--encoder"),
    (EncoderConfig("/no/such/model.keras"), "--encoder"),
    (EncoderConfig("mobilenet", "none", -1), "--image-size"),
    (EncoderConfig("mobilenet", "none", 16), "--image-size"),
    (EncoderConfig("inception_v3", "none", 64), "--image-size"),
    (EncoderConfig("vgg16", "imagenet", 128), "--image-size"),
    (EncoderConfig("mobilenet", "/no/such/weights.h5", 32), "--weights"),
    (EncoderConfig("mobilenet", "none", 32, "bogus"), "--preprocessing"),
])
def test_bad_configs_name_the_flag(config, flag):
    with pytest.raises(EncoderError, match=flag):
        validate_config(config)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_user_keras_model(tiny_keras_model, fmt):
    model, paths, images = tiny_keras_model
    enc = build_encoder(paths[fmt])
    assert enc.image_size == 16 and enc.feature_shape == (4,) and enc.name == f"tiny.{fmt}"
    expected = model.predict(images.astype(np.float32), verbose=0)  # preprocessing "none" by default
    np.testing.assert_allclose(enc.encode(images), expected, rtol=1e-5, atol=1e-6)
    scaled = build_encoder(paths[fmt], preprocessing="mobilenet")
    np.testing.assert_allclose(scaled.encode(images), model.predict(images / 127.5 - 1.0, verbose=0),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(EncoderError, match="--image-size"):
        build_encoder(paths[fmt], image_size=32)


def _convert(model, quantize: bool, images):
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([images[i:i + 1].astype(np.float32)] for i in range(len(images)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


def test_tflite_float_and_uint8(tiny_keras_model, tmp_path):
    model, _, images = tiny_keras_model
    expected = model.predict(images.astype(np.float32), verbose=0)
    path = tmp_path / "tiny.tflite"
    path.write_bytes(_convert(model, False, images))
    enc = build_encoder(str(path))
    assert isinstance(enc, TFLiteEncoder) and enc.input_dtype == "float32"
    assert enc.image_size == 16 and enc.feature_shape == (4,)
    np.testing.assert_allclose(enc.encode(images), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(enc.encode(images[:1]), expected[:1], rtol=1e-4, atol=1e-4)  # batch resize

    qpath = tmp_path / "tiny_uint8.tflite"
    qpath.write_bytes(_convert(model, True, images))
    q = build_encoder(str(qpath))
    assert q.input_dtype == "uint8"
    out = q.encode(images)
    assert out.dtype == np.float32 and out.shape == (5, 4)
    # dequantized outputs track the float model within the quantization error
    assert np.abs(out - expected).max() <= 0.1 * np.abs(expected).max() + 1e-3
    assert q.description.source == str(qpath) and q.description.kind == "tflite"


@pytest.mark.parametrize("copies", [None, 2])
def test_encoder_model_handler_batches_and_shares_through_beams_own_api(copies):
    """The RunInference handler sets batching and sharing through Beam's ModelHandler constructor; Beam's
    public getters report them (exact batches of batch_size; model_copies per machine when asked)."""
    from apache_beam.ml.inference.base import KeyedModelHandler
    from captionbeam.pipelines.inference import EncoderModelHandler, keyed_encoder_handler
    handler = EncoderModelHandler(describe(EncoderConfig("mobilenet", "none", 32)), batch_size=8, model_copies=copies)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 8, "max_batch_size": 8}
    assert handler.share_model_across_processes() is (copies is not None)
    assert handler.model_copies() == (copies or 1)
    keyed = keyed_encoder_handler(describe(EncoderConfig("mobilenet", "none", 32)), batch_size=8, model_copies=copies)
    assert isinstance(keyed, KeyedModelHandler) and keyed.batch_elements_kwargs() == handler.batch_elements_kwargs()
    with pytest.raises(ValueError, match="batch_size"):
        EncoderModelHandler(describe(EncoderConfig("mobilenet", "none", 32)), batch_size=0)


def test_missing_imagenet_weights_say_which_file_to_put_where(tmp_path):
    """Offline (no reachable proxy, an empty $KERAS_HOME), ``features --weights imagenet``: the workers cannot
    build the encoder, and the job exits 2 naming the weights file and where Keras looks for it
    ($KERAS_HOME/models/<file>), instead of exit 1 with a bare download error."""
    import subprocess
    import sys
    from captionbeam.pipelines.sample import SampleConfig, write_sample
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "kh"), "https_proxy": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "no_proxy": "", "NO_PROXY": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    write_sample(SampleConfig(output=str(tmp_path / "s"), images=2, seed=0, size=32))
    job = subprocess.run([sys.executable, "-m", "captionbeam.launch", "features", "--images",
                          str(tmp_path / "s" / "images" / "*.jpg"), "--output", str(tmp_path / "f"),
                          "--encoder", "mobilenet-0.25", "--image-size", "128"],
                         env=env, capture_output=True, text=True, timeout=600)
    last = job.stderr.strip().splitlines()[-1]
    assert job.returncode == 2 and last.startswith(
        "captionbeam features: error: --weights imagenet: could not get the ImageNet weights of mobilenet-0.25"), \
        job.stderr[-3000:]
    assert "put it at $KERAS_HOME/models/mobilenet_2_5_128_tf_no_top.h5" in last, last
    assert str(tmp_path / "kh" / "models" / "mobilenet_2_5_128_tf_no_top.h5") in last and "[while running" not in last


def test_features_encoder_help_is_the_registry():
    """One source for the list: `captionbeam features --encoder`'s help names every registered encoder, in
    the registry's order, with its description."""
    from captionbeam.launch.command_args import command_parser
    from captionbeam.launch.commands import features
    [text] = [a.help for a in command_parser(features)._actions if a.dest == "encoder"]
    positions = [text.index(f"{name} (") for name in REGISTRY]
    assert positions == sorted(positions) and all(spec.description in text for spec in REGISTRY.values())
    assert text.endswith("or a path to a .keras/.h5/.hdf5 model or a .tflite file")
