"""Training end to end (in-process, one device): learning for each architecture, the model dir
contract, ``load_trained``, and bad input through the CLI."""
import json
import os
import shutil

import numpy as np
import pytest

from tests.plugins.training import TINY

ARCHS = ("merge", "inject", "attention")


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_falls_well_below_its_start(trained_model_dirs, arch):
    with open(os.path.join(trained_model_dirs[arch], "history.json")) as f:
        history = json.load(f)
    epochs = history["epochs"]
    first = epochs[0]["first_loss"]
    assert first > 2.5                                        # ~ln(24): an untrained model
    assert epochs[-1]["train_loss"] < 0.5 * first
    assert min(e["val_loss"] for e in epochs) < 0.5 * first   # it generalises to the dev split
    assert history["arch"] == arch and len(epochs) == 3


@pytest.mark.parametrize("arch", ARCHS)
def test_model_dir_contract_and_load_trained(trained_model_dirs, arch):
    import tensorflow as tf
    from model.config import ModelConfig
    from model.data import evaluation_dataset, open_data, split_files
    from model.model_dir import load_trained
    from tests.plugins.training import synthetic_vocabulary
    model_dir = trained_model_dirs[arch]
    for name in ("config.json", "train_config.json", "vocab.txt", "features_spec.json", "best.weights.h5",
                 "last.weights.h5", "history.json", "training_curve.png"):
        assert os.path.getsize(os.path.join(model_dir, name)) > 0, name
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(model_dir, "logs", "validation")))
    with open(os.path.join(model_dir, "training_curve.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    model, config, vocab, spec = load_trained(model_dir)
    assert config == ModelConfig.load(model_dir) and config.arch == arch
    assert vocab == synthetic_vocabulary() and config.vocab_size == len(vocab)
    assert config.encoder == spec.encoder == "synthetic" and config.feature_shape == spec.feature_shape
    assert config.max_length == 9
    # the loaded best weights reproduce the best validation loss recorded in history.json
    with open(os.path.join(model_dir, "history.json")) as f:
        best = min(e["val_loss"] for e in json.load(f)["epochs"])
    data = json.load(open(os.path.join(model_dir, "train_config.json")))["data"]
    total = count = 0.0
    for batch in evaluation_dataset(split_files(data, "dev"), config.feature_shape, 64):
        logits = model((batch["feature"], batch["input"]))
        mask = (batch["target"].numpy() != 0)
        nll = tf.nn.sparse_softmax_cross_entropy_with_logits(batch["target"], logits).numpy()
        total, count = total + (nll * mask).sum(), count + mask.sum()
    assert total / count == pytest.approx(best, rel=1e-4)


def test_model_predicts_the_class_words(trained_model_dirs):
    """The caption depends on the image: greedy step decoding names the right colour and animal."""
    import tensorflow as tf
    from model.model_dir import load_trained
    from tests.plugins.training import ANIMALS, COLOURS
    model, config, vocab, _ = load_trained(trained_model_dirs["merge"])
    k = np.arange(6)
    features = np.zeros((6, 16), "float32")
    features[k, k] = 3.0
    context = model.encode(features)
    states = model.initial_state(context)
    tokens = tf.fill([6], 2)
    words = []
    for _ in range(3):
        logits, states, _ = model.step(tokens, states, context)
        tokens = tf.argmax(logits, -1, output_type=tf.int32)
        words.append([vocab.tokens[int(t)] for t in tokens])
    assert words[0] == ["a"] * 6
    assert words[1] == COLOURS and words[2] == ANIMALS


def _cli(*argv):
    from launch.cli import main
    return main(["train", *argv])


def test_bad_inputs_fail_clearly(synthetic_data, tmp_path, capsys):
    out = str(tmp_path / "m")
    no_vocab = str(tmp_path / "novocab")
    shutil.copytree(synthetic_data, no_vocab)
    os.remove(os.path.join(no_vocab, "vocab.txt"))
    assert _cli("--data", no_vocab, "--model-dir", out, *TINY) == 2
    assert "vocab.txt" in capsys.readouterr().err

    assert _cli("--data", synthetic_data, "--model-dir", out, "--arch", "attention", *TINY) == 2
    assert "spatial feature map" in capsys.readouterr().err

    assert _cli("--data", synthetic_data, "--model-dir", out, "--train-split", "nosuch", *TINY) == 2
    assert "--train-split: no 'nosuch' records" in capsys.readouterr().err

    assert _cli("--data", str(tmp_path / "missing"), "--model-dir", out, *TINY) == 2
    assert "--data: directory not found" in capsys.readouterr().err

    assert _cli("--data", synthetic_data, "--model-dir", out, "--mixed-precision", *TINY) == 2
    assert "--mixed-precision needs a GPU" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        _cli("--data", synthetic_data, "--model-dir", out, "--arch", "transformer")
    assert "--arch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cli("--data", synthetic_data, "--model-dir", out, "--batch-size", "0")
    assert "--batch-size" in capsys.readouterr().err


def test_a_model_dir_holding_another_model_is_not_resumed(trained_model_dirs, synthetic_data, tmp_path, capsys):
    model_dir = str(tmp_path / "m")
    shutil.copytree(trained_model_dirs["merge"], model_dir)
    assert _cli("--data", synthetic_data, "--model-dir", model_dir, "--units", "48", "--epochs", "7") == 2
    assert "holds a different model" in capsys.readouterr().err
