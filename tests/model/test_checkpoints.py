"""Damaged checkpoints (issue 12 #5): the trainer falls back to the newest checkpoint that restores and
says which; it never starts from scratch over checkpoints it cannot read. Real checkpoints written by a
real training run, damaged on disk the ways a crash or a full disk damages them."""
import logging
import os
import shutil

import pytest

from captionbeam.model.config import ModelConfig, TrainConfig


def _cfg(data, model_dir, epochs, **kw):
    return TrainConfig(data=str(data), model_dir=str(model_dir), epochs=epochs, steps_per_epoch=4, batch_size=16,
                       learning_rate=0.01, log_every=10, checkpoint_every=2, keep_checkpoints=3, shuffle_buffer=200,
                       early_stopping_patience=0, strategy="one_device", seed=1, val_split="none", **kw)


MODEL = ModelConfig(arch="merge", units=16, embedding_dim=16, dropout=0.1)


@pytest.fixture(scope="module")
def trained(synthetic_data, tmp_path_factory):
    """A model dir after 2 epochs x 4 steps: checkpoints ckpt-4, ckpt-6, ckpt-8 (keep 3)."""
    from captionbeam.model.train import train
    model_dir = tmp_path_factory.mktemp("ckpt") / "m"
    train(_cfg(synthetic_data, model_dir, epochs=2), MODEL)
    names = sorted(os.listdir(model_dir / "checkpoints"))
    assert "ckpt-8.index" in names and "ckpt-6.index" in names, names
    return model_dir


def _data_file(ckdir, step):
    return next(ckdir / n for n in os.listdir(ckdir) if n.startswith(f"ckpt-{step}.data"))


def _truncate(ckdir):
    with open(_data_file(ckdir, 8), "r+b") as f:
        f.truncate(7)


def _garbage(ckdir):
    path = _data_file(ckdir, 8)
    size = os.path.getsize(path)
    path.write_bytes(os.urandom(size))


def _no_index(ckdir):
    os.remove(ckdir / "ckpt-8.index")


def _garbage_state(ckdir):
    (ckdir / "checkpoint").write_bytes(b"\x00\xffnot a CheckpointState {{{")


@pytest.mark.parametrize("damage,resumed", [(_truncate, 6), (_garbage, 6), (_no_index, 6), (_garbage_state, 8)])
def test_resumes_from_newest_checkpoint_that_restores(trained, synthetic_data, tmp_path, caplog, damage, resumed):
    from captionbeam.model.train import train
    model_dir = tmp_path / "m"
    shutil.copytree(trained, model_dir)
    damage(model_dir / "checkpoints")
    with caplog.at_level(logging.INFO, logger="captionbeam.train"):
        summary = train(_cfg(synthetic_data, model_dir, epochs=3), MODEL)
    text = caplog.text
    assert summary["resumed_from"] == resumed and summary["step"] == 12     # went on, not from step 0
    assert "starting from scratch" not in text
    assert f"ckpt-{resumed}: step {resumed}" in text                         # "resumed from .../ckpt-N: step N"
    if resumed == 6:
        assert "ckpt-8 does not restore" in text and "resuming from" in text and f"ckpt-{resumed}" in text
    else:
        assert "checkpoint is unreadable" in text
    if damage is not _garbage_state:
        return
    # the state file was rewritten from the checkpoint files: a further resume needs no fallback
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="captionbeam.train"):
        again = train(_cfg(synthetic_data, model_dir, epochs=4), MODEL)
    assert again["resumed_from"] == 12 and "does not restore" not in caplog.text


def test_no_checkpoint_restores_fails_naming_the_dir(trained, synthetic_data, tmp_path):
    from captionbeam.model.checkpoints import CheckpointError
    from captionbeam.model.train import train
    model_dir = tmp_path / "m"
    shutil.copytree(trained, model_dir)
    ckdir = model_dir / "checkpoints"
    for name in os.listdir(ckdir):
        if ".data" in name:
            (ckdir / name).write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=f"{ckdir}: none of the 3 checkpoint"):
        train(_cfg(synthetic_data, model_dir, epochs=3), MODEL)
    assert sorted(n for n in os.listdir(ckdir) if n.endswith(".index")) == \
        ["ckpt-4.index", "ckpt-6.index", "ckpt-8.index"]                     # nothing overwritten
