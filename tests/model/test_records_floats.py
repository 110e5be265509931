"""The packed float feature of the records equals protobuf's element-by-element one, for every shape."""
import numpy as np
import pytest

from captionbeam.model.records import _floats


@pytest.mark.parametrize("shape", [(0,), (1,), (16,), (1024,), (7, 7, 1280), (3, 5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_packed_floats_equal_protobufs_own(shape, dtype):
    import tensorflow as tf
    values = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    expected = tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(values, np.float32).ravel()))
    assert _floats(values) == expected
    assert _floats(values).SerializeToString() == expected.SerializeToString()


def test_packed_floats_of_a_non_contiguous_view():
    import tensorflow as tf
    values = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    assert list(_floats(values).float_list.value) == values.ravel().tolist()
    assert _floats(values) == tf.train.Feature(float_list=tf.train.FloatList(value=values.ravel()))
