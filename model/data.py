"""Streaming tf.data input for the trainer: training records -> padded batches of caption examples.

A ``--data`` directory (``captionbeam captions`` output) holds ``vocab.txt``, ``features_spec.json``,
``stats.json`` and ``<split>-NNNNN-of-NNNNN.tfrecord`` shards of ``records.training_example``.

Pipeline (never materialised; memory is bounded by the shuffle buffer, not the dataset size)::

    shard files (per input pipeline / worker) -> shuffle file order (seeded per epoch)
    -> parallel interleave of TFRecordDatasets -> parse -> expand each image's captions into examples
       {feature, input = caption[:-1], target = caption[1:]}
    -> bounded shuffle -> padded batch (optionally bucketed by length) -> repeat -> skip (resume) -> prefetch

Targets are sparse token ids; ``<pad>``=0 marks positions the loss ignores.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from captionbeam.model import records
from captionbeam.model.data_stats import DataStats
from captionbeam.model.vocab import PAD_ID, VOCAB_FILE, Vocabulary

log = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE


@dataclass
class SplitInfo:
    files: List[str]
    images: int
    examples: int            # captions
    tokens: int              # target tokens (caption length - 1, summed)
    max_length: int          # longest caption, <start>/<end> included


@dataclass
class DataInfo:
    """What a ``--data`` directory holds, checked."""
    directory: str
    vocab: Vocabulary
    features_spec: records.FeaturesSpec
    feature_shape: List[int]
    stats: DataStats = field(default_factory=DataStats)  # stats.json (defaults when the directory has none)


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


def split_files(directory: str, split: str) -> List[str]:
    """Sorted ``<split>-NNNNN-of-NNNNN.tfrecord`` shards (not ``<split>-captions-*``)."""
    pattern = records.shard_pattern(directory, records.split_prefix(split))
    name_re = re.compile(rf"^{re.escape(split)}-\d+-of-\d+{re.escape(records.RECORD_SUFFIX)}$")
    return sorted(p for p in tf.io.gfile.glob(pattern) if name_re.match(p.rsplit("/", 1)[-1]))


def open_data(directory: str) -> DataInfo:
    """Check a ``--data`` directory: vocabulary, features spec, the features' shape in the records."""
    if not tf.io.gfile.isdir(directory):
        raise FileNotFoundError(f"--data: directory not found: {directory}")
    vocab_path = _join(directory, VOCAB_FILE)
    if not tf.io.gfile.exists(vocab_path):
        raise FileNotFoundError(f"--data: no vocabulary {vocab_path} (write it with `captionbeam captions`)")
    vocab = Vocabulary.load(vocab_path)
    spec = records.FeaturesSpec.load(directory)
    stats = DataStats.load(directory) or DataStats()
    return DataInfo(directory, vocab, spec, [int(d) for d in spec.feature_shape], stats)


def record_feature_shape(path: str) -> Tuple[int, ...]:
    """``feature_shape`` of the first record of a shard (to check it against the features spec)."""
    for raw in tf.data.TFRecordDataset(path).take(1):
        ex = tf.train.Example.FromString(raw.numpy())
        return tuple(ex.features.feature["feature_shape"].int64_list.value)
    return ()


def describe_split(info: DataInfo, split: str, flag: str = "--train-split") -> SplitInfo:
    """Files and sizes of a split (one cheap pass over ``caption_lengths``); clear errors when empty."""
    files = split_files(info.directory, split)
    if not files:
        raise FileNotFoundError(
            f"{flag}: no '{split}' records in {info.directory} (expected {split}-NNNNN-of-NNNNN.tfrecord)")
    shape = record_feature_shape(files[0])
    if shape and list(shape) != info.feature_shape:
        raise ValueError(f"{files[0]}: features have shape {shape} but {records.FEATURES_SPEC_FILE} says "
                         f"{tuple(info.feature_shape)}")
    lengths = (tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 8))
               .map(lambda s: tf.io.parse_single_example(
                    s, {"caption_lengths": tf.io.VarLenFeature(tf.int64)})["caption_lengths"].values,
                    num_parallel_calls=AUTOTUNE))
    images = examples = tokens = longest = 0
    for batch in lengths.ragged_batch(4096):
        values = batch.flat_values
        images += int(batch.nrows())
        examples += int(tf.size(values))
        if int(tf.size(values)):
            tokens += int(tf.reduce_sum(values - 1))
            longest = max(longest, int(tf.reduce_max(values)))
    if examples == 0:
        raise ValueError(f"{flag}: the '{split}' split in {info.directory} has no captions "
                         f"({len(files)} file(s), {images} image(s))")
    return SplitInfo(files, images, examples, tokens, longest)


def expand_captions(parsed: Dict[str, tf.Tensor]) -> tf.data.Dataset:
    """One parsed image -> one example per caption (teacher forcing over the whole sequence)."""
    feature = parsed["feature"]
    return tf.data.Dataset.from_tensor_slices(parsed["captions"]).map(
        lambda c: {"feature": feature, "input": c[:-1], "target": c[1:]})


def _shard_files(files: List[str], num_pipelines: int, index: int) -> Tuple[List[str], bool]:
    """Files of input pipeline ``index`` (FILE sharding); (all files, False) when there are too few."""
    if num_pipelines <= 1:
        return files, True
    if len(files) < num_pipelines:
        log.warning("only %d training file(s) for %d workers: sharding by example instead of by file "
                    "(every worker reads every file; write more shards, e.g. `captionbeam captions "
                    "--num-shards N` with N >= workers, for efficient input)", len(files), num_pipelines)
        return files, False
    return files[index::num_pipelines], True


def _parsed_examples(files: Sequence[str], feature_shape: Sequence[int], seed: int, num_pipelines: int,
                     pipeline_index: int) -> tf.data.Dataset:
    """This input pipeline's share of the records, files shuffled per ``seed``, parsed (one element per image)."""
    files, by_file = _shard_files(list(files), num_pipelines, pipeline_index)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if len(files) > 1:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(len(files), 8)), block_length=1,
                       num_parallel_calls=AUTOTUNE, deterministic=True)
    if not by_file:
        ds = ds.shard(num_pipelines, pipeline_index)
    return ds.map(lambda s: records.parse_training_example(s, feature_shape), num_parallel_calls=AUTOTUNE,
                  deterministic=True)


def training_dataset(files: Sequence[str], feature_shape: Sequence[int], batch_size: int, *,
                     seed: int, shuffle_buffer: int = 10000, num_pipelines: int = 1, pipeline_index: int = 0,
                     skip_batches: int = 0, bucket_by_length: bool = False, max_length: int = 0,
                     repeat: bool = True) -> tf.data.Dataset:
    """Infinite (``repeat``) stream of padded training batches of ``batch_size`` examples for one input
    pipeline. Deterministic for a given ``seed`` (so a resumed run can ``skip_batches`` to where it was)."""
    ds = _parsed_examples(files, feature_shape, seed, num_pipelines, pipeline_index)
    ds = ds.flat_map(expand_captions)
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = _batch(ds, feature_shape, batch_size, drop_remainder=True, bucket_by_length=bucket_by_length,
                max_length=max_length)
    if skip_batches:
        ds = ds.skip(skip_batches)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # sharded above
    return ds.with_options(options).prefetch(AUTOTUNE)


def image_dataset(files: Sequence[str], feature_shape: Sequence[int], batch_size: int, *, seed: int,
                  shuffle_buffer: int = 2000, num_pipelines: int = 1, pipeline_index: int = 0,
                  skip_batches: int = 0) -> tf.data.Dataset:
    """Infinite stream of batches of *images* (self-critical training): ``feature`` [B, *feature_shape]
    and ``refs`` [B, R, L] int32, every caption of the image (``<start>`` ... ``<end>``, ``<pad>``-padded;
    images with fewer captions get all-``<pad>`` rows). Sharded, shuffled and skippable like
    :func:`training_dataset` (deterministic per ``seed``)."""
    ds = _parsed_examples(files, feature_shape, seed, num_pipelines, pipeline_index)
    ds = ds.map(lambda p: {"feature": p["feature"], "refs": p["captions"].to_tensor(PAD_ID)})
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.padded_batch(batch_size, padded_shapes={"feature": list(feature_shape), "refs": [None, None]},
                         padding_values={"feature": 0.0, "refs": PAD_ID}, drop_remainder=True)
    if skip_batches:
        ds = ds.skip(skip_batches)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(AUTOTUNE)


def evaluation_dataset(files: Sequence[str], feature_shape: Sequence[int], batch_size: int) -> tf.data.Dataset:
    """Every caption of a split once, in file order, padded batches (last one partial)."""
    ds = tf.data.TFRecordDataset(list(files), num_parallel_reads=min(len(files), 8))
    ds = ds.map(lambda s: records.parse_training_example(s, feature_shape), num_parallel_calls=AUTOTUNE)
    ds = ds.flat_map(expand_captions)
    return _batch(ds, feature_shape, batch_size, drop_remainder=False).prefetch(AUTOTUNE)


def _batch(ds, feature_shape, batch_size, drop_remainder, bucket_by_length=False, max_length=0):
    shapes = {"feature": list(feature_shape), "input": [None], "target": [None]}
    pads = {"feature": 0.0, "input": PAD_ID, "target": PAD_ID}
    if bucket_by_length and max_length > 8:
        boundaries = list(range(8, max_length, 4))
        return ds.bucket_by_sequence_length(
            lambda ex: tf.shape(ex["input"])[0], boundaries, [batch_size] * (len(boundaries) + 1),
            padded_shapes=shapes, padding_values=pads, drop_remainder=drop_remainder)
    return ds.padded_batch(batch_size, padded_shapes=shapes, padding_values=pads, drop_remainder=drop_remainder)
