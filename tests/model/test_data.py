"""The streaming input: records -> caption examples -> padded batches; sharding; bad data dirs."""
import os
import shutil

import numpy as np
import pytest

from tests.plugins.training import write_synthetic_data


def _all_captions(directory, split):
    import tensorflow as tf
    from captionbeam.model import records
    from captionbeam.model.data import split_files
    out = []
    for path in split_files(directory, split):
        for raw in tf.data.TFRecordDataset(path):
            f = tf.train.Example.FromString(raw.numpy()).features.feature
            out += [tuple(c) for c in records.split_captions(f["caption_ids"].int64_list.value,
                                                              f["caption_lengths"].int64_list.value)]
    return out


def test_describe_split_counts_and_ignores_caption_only_shards(synthetic_data, tmp_path):
    from captionbeam.model.data import describe_split, open_data
    data = str(tmp_path / "d")
    shutil.copytree(synthetic_data, data)
    open(os.path.join(data, "train-captions-00000-of-00001.tfrecord"), "wb").close()   # not a training shard
    info = open_data(data)
    split = describe_split(info, "train")
    caps = _all_captions(data, "train")
    assert [os.path.basename(f) for f in split.files] == [f"train-{i:05d}-of-00003.tfrecord" for i in range(3)]
    assert (split.images, split.examples) == (96, len(caps)) == (96, 288)
    assert split.tokens == sum(len(c) - 1 for c in caps)
    assert split.max_length == max(len(c) for c in caps)


def test_training_batches_are_shifted_padded_captions(synthetic_data):
    from captionbeam.model.data import describe_split, open_data, training_dataset
    info = open_data(synthetic_data)
    split = describe_split(info, "train")
    ds = training_dataset(split.files, info.feature_shape, 32, seed=1, shuffle_buffer=64)
    want = {c for c in _all_captions(synthetic_data, "train")}
    seen = []
    for batch in ds.take(9):            # one pass: 288 captions / 32
        assert batch["feature"].shape == (32, 16)
        inp, tgt = batch["input"].numpy(), batch["target"].numpy()
        assert inp.shape == tgt.shape and inp.shape[0] == 32
        for i, t in zip(inp, tgt):
            n = int((t != 0).sum())
            assert (i[n:] == 0).all() and (t[n:] == 0).all()       # padding at the end, masked alike
            assert i[0] == 2 and t[n - 1] == 3                      # <start> in, <end> out
            np.testing.assert_array_equal(i[1:n], t[: n - 1])       # target = input shifted by one
            seen.append(tuple(i[:n]) + (3,))
    assert len(seen) == 288 and set(seen) == want                    # every caption once per pass


def test_training_stream_is_deterministic_and_skippable(synthetic_data):
    from captionbeam.model.data import describe_split, open_data, training_dataset
    info = open_data(synthetic_data)
    files = describe_split(info, "train").files
    a = [b["input"].numpy() for b in training_dataset(files, [16], 16, seed=7, shuffle_buffer=50).take(6)]
    b = [b["input"].numpy() for b in training_dataset(files, [16], 16, seed=7, shuffle_buffer=50,
                                                      skip_batches=4).take(2)]
    c = [b["input"].numpy() for b in training_dataset(files, [16], 16, seed=8, shuffle_buffer=50).take(6)]
    for x, y in zip(a[4:], b):
        np.testing.assert_array_equal(x, y)          # resuming = skipping what was trained on
    assert any(x.shape != y.shape or (x != y).any() for x, y in zip(a, c))


def test_file_sharding_splits_files_between_workers(synthetic_data, caplog):
    from captionbeam.model.data import describe_split, evaluation_dataset, open_data, training_dataset
    info = open_data(synthetic_data)
    files = describe_split(info, "train").files

    def captions(**kw):
        ds = training_dataset(files, [16], 4, seed=0, shuffle_buffer=1, repeat=False, **kw)
        return [tuple(row[row != 0]) for b in ds for row in b["input"].numpy()]

    everything = captions()
    shards = [captions(num_pipelines=3, pipeline_index=i) for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(everything) and all(len(s) == 96 for s in shards)
    with caplog.at_level("WARNING"):
        few = [captions(num_pipelines=4, pipeline_index=i) for i in range(4)]  # 3 files, 4 workers
    assert "sharding by example" in caplog.text
    assert sorted(sum(few, [])) == sorted(everything)
    n = sum(int(b["input"].shape[0]) for b in evaluation_dataset(files, [16], 50))
    assert n == 288


def test_missing_vocabulary_fails_clearly(synthetic_data, tmp_path):
    from captionbeam.model.data import open_data
    data = str(tmp_path / "d")
    shutil.copytree(synthetic_data, data)
    os.remove(os.path.join(data, "vocab.txt"))
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        open_data(data)


def test_empty_and_missing_splits_fail_clearly(tmp_path):
    from captionbeam.model.data import describe_split, open_data
    data = write_synthetic_data(str(tmp_path / "d"), images=(("train", 0, 1), ("dev", 4, 1)))
    info = open_data(data)
    with pytest.raises(ValueError, match="'train' split .* has no captions"):
        describe_split(info, "train")
    with pytest.raises(FileNotFoundError, match="no 'test' records"):
        describe_split(info, "test", "--val-split")


def test_features_not_matching_the_spec_fail_clearly(tmp_path):
    from captionbeam.model import records
    from captionbeam.model.data import describe_split, open_data
    data = write_synthetic_data(str(tmp_path / "d"), feature_shape=(16,))
    records.FeaturesSpec(encoder="x", feature_shape=[4, 4], image_size=[32, 32], preprocessing="none").save(data)
    with pytest.raises(ValueError, match=r"shape \(16,\) but features_spec.json says \(4, 4\)"):
        describe_split(open_data(data), "train")
