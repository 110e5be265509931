"""model.encoders' composite encoders (``a+b``): registered encoders on the same pixels, outputs concatenated.
Registered encoders with --weights none at small sizes (no download)."""
import numpy as np
import pytest

from captionbeam.model.encoder_description import EncoderDescription
from captionbeam.model.encoders import (EncoderConfig, EncoderError, build_described, build_encoder, composite_spec,
                                        config_of, describe, validate_config)

NAME = "mobilenet-conv+mobilenet_v2-conv"


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)


def test_composite_is_its_parts_concatenated(images):
    composite = build_encoder(NAME, "none", 64)
    v1, v2 = build_encoder("mobilenet-conv", "none", 64), build_encoder("mobilenet_v2-conv", "none", 64)
    got = composite.encode(images)
    a, b = v1.encode(images), v2.encode(images)
    assert composite.feature_shape == (2, 2, 1024 + 1280) and got.shape == (2, 2, 2, 2304)
    # each part sees its own keras.applications preprocessing (applied inside the one model)
    np.testing.assert_allclose(got[..., :1024], a, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[..., 1024:], b, rtol=1e-4, atol=1e-4)
    assert np.abs(got[..., 1024:]).max() > 0


def test_description_round_trips_and_rebuilds(images):
    enc = build_encoder(NAME, "none", 64)
    d = enc.description
    assert (d.name, d.kind, d.family, d.output, d.preprocessing_mode) == (NAME, "keras.applications", "composite",
                                                                         "map", "none")
    again = EncoderDescription.from_dict(d.to_dict())
    assert again == d and config_of(again) == EncoderConfig(NAME, "none", 64, None)
    np.testing.assert_array_equal(build_described(again).encode(images), enc.encode(images))
    planned = describe(EncoderConfig(NAME, "none", 64))       # what the job plans before building anything
    assert planned.identity() == d.with_feature_shape(()).identity()


@pytest.mark.parametrize("name,message", [
    ("mobilenet-conv+nope", "unknown: 'nope'"),
    ("mobilenet-conv+mobilenet-conv", "twice"),
    ("mobilenet-conv+mobilenet", "mixes feature maps and vectors"),
    ("mobilenet+inception_v3", "different input sizes"),
])
def test_bad_composites_say_why(name, message):
    with pytest.raises(EncoderError, match=message):
        validate_config(EncoderConfig(name, "none"))


def test_composite_flags_that_cannot_apply():
    with pytest.raises(EncoderError, match="--weights"):
        validate_config(EncoderConfig(NAME, "/some/weights.h5"))
    with pytest.raises(EncoderError, match="--preprocessing"):
        validate_config(EncoderConfig(NAME, "none", 64, "caffe"))
    with pytest.raises(EncoderError, match="different grids"):
        build_encoder("mobilenet-conv+vgg16-conv", "none", 64)    # 2x2 vs 4x4 at 64 px


def test_composite_spec_sizes():
    spec = composite_spec(NAME)
    assert spec.default_size == 224 and 224 in spec.imagenet_sizes and spec.parts == ("mobilenet-conv",
                                                                                      "mobilenet_v2-conv")
