"""The one model-handler failure policy (``pipelines.isolation``), shared by ``features``' encoder handler
and ``bulk``'s handlers: one bad image in a batch costs only itself."""
import numpy as np
import pytest

from captionbeam.pipelines.isolation import InferenceFailure, run_isolated


def _double(batch):
    if any(x < 0 for x in batch):
        raise ValueError(f"negative in {list(batch)}")
    return [2 * x for x in batch]


def test_a_failing_batch_is_retried_image_by_image():
    out = run_isolated([1, -2, 3], _double, lambda item, e: ("dead", item, type(e).__name__))
    assert out == [2, ("dead", -2, "ValueError"), 6]
    assert run_isolated([1, 2], _double, lambda *a: None) == [2, 4]
    assert run_isolated([-1], _double, lambda item, e: str(e)) == ["negative in [-1]"]


def test_a_wrong_number_of_outputs_is_a_failure_not_a_silent_loss():
    assert run_isolated([1, 2], lambda b: [0], lambda item, e: ("dead", item)) == [0, 0]   # retried alone
    assert run_isolated([1, 2], lambda b: [], lambda item, e: ("dead", item)) == [("dead", 1), ("dead", 2)]


@pytest.fixture(scope="module")
def encoder_handler():
    from captionbeam.model.encoders import EncoderConfig, describe
    from captionbeam.pipelines.inference import EncoderModelHandler
    handler = EncoderModelHandler(describe(EncoderConfig("mobilenet", weights="none", image_size=32)), batch_size=4)
    return handler, handler.load_model()


def test_features_handler_loses_only_the_bad_image_of_a_batch(encoder_handler):
    """Before the one policy, the encoder handler failed the whole batch (every image a dead letter)."""
    handler, encoder = encoder_handler
    rng = np.random.default_rng(0)
    good = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    bad = rng.integers(0, 255, (32, 32), dtype=np.uint8)             # no channel axis: the encoder fails on it
    alone = handler.run_inference(good, encoder)
    out = handler.run_inference([good[0], bad, good[1], good[2]], encoder)
    assert [type(o).__name__ for o in out] == ["ndarray", "InferenceFailure", "ndarray", "ndarray"]
    for got, want in zip([out[0], out[2], out[3]], alone):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert isinstance(out[1], InferenceFailure) and out[1].error and out[1].message


def test_one_decode_images_class():
    """features and bulk decode through the same PTransform (there used to be two classes of that name)."""
    import ast
    import os
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "pipelines")
    found = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                tree = ast.parse(open(os.path.join(dirpath, f), encoding="utf-8").read())
                found += [f for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "DecodeImages"]
    assert found == ["decoding.py"]
