"""The Beam steps of the ``captions`` job (:mod:`pipelines.captions` plans and composes them): read and
clean the captions file, read the feature records, join both with the split files by image id (one
outcome per id: a split's example or one of ``JOIN_CATEGORIES``), encode captions with the vocabulary
and write a split's TFRecords."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import apache_beam as beam
import numpy as np

import captionbeam.pipelines.io as pio
from captionbeam.model import caption_files, records
from captionbeam.model.text import get_cleaner, wrap
from captionbeam.model.vocab import UNK_ID
from captionbeam.pipelines.counters import NAMESPACE
from captionbeam.pipelines.deadletter import DeadLetter

# Outcomes of the join besides "joined into a split"; each image id gets exactly one.
IN_SEVERAL_SPLITS = "in_several_splits"              # split files disagree: the image is left out of all
FEATURES_WITHOUT_CAPTIONS = "features_without_captions"
CAPTIONS_WITHOUT_FEATURES = "captions_without_features"
SPLIT_WITHOUT_CAPTIONS = "split_without_captions"    # named in a split file, but no captions (and no features)
NOT_IN_ANY_SPLIT = "not_in_any_split"                # captions (and features) but in no split file
JOIN_CATEGORIES = (IN_SEVERAL_SPLITS, FEATURES_WITHOUT_CAPTIONS, CAPTIONS_WITHOUT_FEATURES,
                   SPLIT_WITHOUT_CAPTIONS, NOT_IN_ANY_SPLIT)


# ----------------------------------------------------------------------------- elements
@dataclass
class CaptionTokens:
    order: int                 # position in the captions file
    tokens: List[str]          # cleaned, without start/end


@dataclass
class ImageExample:
    image_id: str
    split: str
    captions: List[List[str]]  # cleaned tokens, in file order, without start/end
    feature: Optional[np.ndarray] = None


def _counter(name: str):
    return beam.metrics.Metrics.counter(NAMESPACE, name)


# ----------------------------------------------------------------------------- reading captions
DEFAULT_MAX_CAPTION_TOKENS = 50


class ParseCaptionFile(beam.DoFn):
    TRUNCATED = "truncated"

    def __init__(self, fmt: str, clean: str, keep_empty: bool = False,
                 max_tokens: int = DEFAULT_MAX_CAPTION_TOKENS):
        self.fmt = fmt
        self.clean = clean
        self.keep_empty = keep_empty
        self.max_tokens = max_tokens

    def process(self, path: str):
        cleaner = get_cleaner(self.clean)
        raw = pio.read_bytes(path)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise caption_files.CaptionFileError(f"--captions {path}: not UTF-8 text: {e}") from None
        read, dead = _counter("captions_read"), _counter("captions_dead_letters")
        for row in caption_files.iter_rows(text, self.fmt, source=path):
            if isinstance(row, caption_files.CaptionFileError):
                dead.inc()
                yield beam.pvalue.TaggedOutput("dead", DeadLetter.from_exception(path, row, "parse_captions"))
                continue
            tokens = cleaner(row.caption)
            if not tokens and not self.keep_empty:
                dead.inc()
                yield beam.pvalue.TaggedOutput("dead", DeadLetter(
                    path=f"{path}#{row.order}", error="EmptyCaption",
                    message=f"caption {row.caption!r} of {row.image_id!r} has no tokens left after --clean {self.clean}",
                    stage="clean"))
                continue
            if len(tokens) > self.max_tokens:
                cut = len(tokens) - self.max_tokens
                tokens = tokens[: self.max_tokens]
                _counter("captions_truncated").inc()
                _counter("caption_tokens_cut").inc(cut)
                yield beam.pvalue.TaggedOutput(self.TRUNCATED, cut)
            read.inc()
            yield row.image_id, CaptionTokens(row.order, tokens)


class ReadCaptions(beam.PTransform):
    """Captions file -> (image_id, CaptionTokens); bad lines -> dead letters (tag ``dead``); captions longer
    than ``max_tokens`` are cut to it and the number of tokens cut from each goes to tag ``truncated``."""

    def __init__(self, path: str, fmt: str, clean: str, keep_empty: bool = False,
                 max_tokens: int = DEFAULT_MAX_CAPTION_TOKENS):
        super().__init__()
        self.path, self.fmt, self.clean, self.keep_empty, self.max_tokens = path, fmt, clean, keep_empty, max_tokens

    def expand(self, pbegin):
        return (pbegin
                | "Captions file" >> beam.Create([self.path])
                | "Parse and clean" >> beam.ParDo(ParseCaptionFile(self.fmt, self.clean, self.keep_empty,
                                                                    self.max_tokens))
                .with_outputs("dead", ParseCaptionFile.TRUNCATED, main="captions"))


# ----------------------------------------------------------------------------- reading features
class _ParseFeature(beam.DoFn):
    def __init__(self, feature_shape: Optional[Sequence[int]]):
        self.feature_shape = tuple(feature_shape) if feature_shape else None

    def process(self, element):
        record_file, serialized = element
        try:
            row = records.parse_feature_example(serialized, record_file)
        except Exception as e:  # noqa: BLE001 - any corrupt record is a dead letter
            yield beam.pvalue.TaggedOutput("dead", DeadLetter.from_exception(record_file, e, "parse_features"))
            return
        if self.feature_shape and tuple(row.feature.shape) != self.feature_shape:
            yield beam.pvalue.TaggedOutput("dead", DeadLetter(
                path=row.path, error="FeatureShapeMismatch",
                message=f"{row.image_id}: feature shape {tuple(row.feature.shape)} in {record_file}, "
                        f"features_spec.json says {self.feature_shape}", stage="parse_features"))
            return
        _counter("feature_records_read").inc()
        yield row.image_id, row


class ReadFeatures(beam.PTransform):
    """features-*.tfrecord files -> (image_id, FeatureRow); unreadable records -> dead letters."""

    def __init__(self, files: Sequence[str], feature_shape: Optional[Sequence[int]], compression: str = "auto"):
        super().__init__()
        self.files, self.feature_shape, self.compression = list(files), feature_shape, compression

    def expand(self, pbegin):
        return (pbegin
                | "Feature files" >> beam.Create(self.files)
                | "Read records" >> beam.io.ReadAllFromTFRecord(compression_type=self.compression, with_filename=True)
                | "Parse" >> beam.ParDo(_ParseFeature(self.feature_shape)).with_outputs("dead", main="features"))


# ----------------------------------------------------------------------------- the join
class _ClassifyImage(beam.DoFn):
    """One image id's grouped inputs -> an ImageExample in its split, or one accounting category."""

    def __init__(self, with_features: bool, default_split: Optional[str]):
        self.with_features = with_features
        self.default_split = default_split

    def process(self, element):
        iid, grouped = element
        captions: List[CaptionTokens] = list(grouped["captions"])
        splits = sorted(set(grouped["splits"]))
        features: List[records.FeatureRow] = list(grouped.get("features", ())) if self.with_features else []
        if len(features) > 1:
            features.sort(key=lambda f: (f.path, f.sha256))
            for extra in features[1:]:
                yield beam.pvalue.TaggedOutput("dead", DeadLetter(
                    path=extra.path, error="DuplicateImageId",
                    message=f"image id {iid!r} has several feature records; kept {features[0].path}", stage="join"))
        if self.default_split and not splits:
            splits = [self.default_split]

        if len(splits) > 1:
            category = IN_SEVERAL_SPLITS
        elif not captions:
            category = FEATURES_WITHOUT_CAPTIONS if features else SPLIT_WITHOUT_CAPTIONS
        elif self.with_features and not features:
            category = CAPTIONS_WITHOUT_FEATURES
        elif not splits:
            category = NOT_IN_ANY_SPLIT
        else:
            category = None
        if category is not None:
            _counter(f"join_{category}").inc()
            yield beam.pvalue.TaggedOutput("accounting", (category, iid))
            return
        captions.sort(key=lambda c: c.order)
        _counter("images_joined").inc()
        yield ImageExample(iid, splits[0], [c.tokens for c in captions], features[0].feature if features else None)


class JoinByImage(beam.PTransform):
    """{'captions', 'splits'[, 'features']} keyed by image id -> CoGroupByKey -> ImageExamples
    (main), ``accounting`` (category, image_id) and ``dead`` (duplicate feature records)."""

    def __init__(self, with_features: bool, default_split: Optional[str]):
        super().__init__()
        self.with_features, self.default_split = with_features, default_split

    def expand(self, inputs):
        return (inputs
                | "Group by image id" >> beam.CoGroupByKey()
                | "Classify" >> beam.ParDo(_ClassifyImage(self.with_features, self.default_split))
                .with_outputs("accounting", "dead", main="images"))


# ----------------------------------------------------------------------------- encoding and stats
@dataclass
class SplitStats:
    images: int = 0
    captions: int = 0
    tokens: int = 0            # words, without start/end
    unknown_tokens: int = 0
    max_length: int = 0        # tokens with start/end
    total_length: int = 0

    def merge(self, other: "SplitStats") -> "SplitStats":
        return SplitStats(self.images + other.images, self.captions + other.captions, self.tokens + other.tokens,
                          self.unknown_tokens + other.unknown_tokens, max(self.max_length, other.max_length),
                          self.total_length + other.total_length)

    def to_dict(self) -> Dict[str, object]:
        return {
            "images": self.images, "captions": self.captions, "tokens": self.tokens,
            "unknown_tokens": self.unknown_tokens,
            "unknown_rate": round(self.unknown_tokens / self.tokens, 6) if self.tokens else 0.0,
            "max_caption_length": self.max_length,
            "mean_caption_length": round(self.total_length / self.captions, 3) if self.captions else 0.0,
        }


class MergeSplitStats(beam.CombineFn):
    def create_accumulator(self):
        return SplitStats()

    def add_input(self, acc, stats):  # noqa: D102
        return acc.merge(stats)

    def merge_accumulators(self, accs):
        out = SplitStats()
        for a in accs:
            out = out.merge(a)
        return out

    def extract_output(self, acc):
        return acc


class _Encode(beam.DoFn):
    def __init__(self, with_features: bool):
        self.with_features = with_features

    def process(self, ex, vocabulary):
        ids = [vocabulary.encode(wrap(tokens)) for tokens in ex.captions]
        unknown = sum(1 for c in ids for t in c[1:-1] if t == UNK_ID)
        words = sum(len(t) for t in ex.captions)
        if self.with_features:
            serialized = records.training_example(ex.image_id, ex.feature, ids)
        else:
            serialized = records.caption_example(ex.image_id, ids)
        _counter(f"records_{ex.split}").inc()
        _counter("captions_written").inc(len(ids))
        yield beam.pvalue.TaggedOutput("stats", (ex.split, SplitStats(
            1, len(ids), words, unknown, max(len(c) for c in ids), sum(len(c) for c in ids))))
        yield ex.split, serialized


class EncodeCaptions(beam.PTransform):
    """ImageExamples + the vocabulary (side input) -> (split, serialized record) and ``stats``."""

    def __init__(self, vocabulary, with_features: bool):
        super().__init__()
        self.vocabulary, self.with_features = vocabulary, with_features

    def expand(self, images):
        return images | "Encode" >> beam.ParDo(
            _Encode(self.with_features), beam.pvalue.AsSingleton(self.vocabulary)).with_outputs("stats", main="records")


class WriteSplits(beam.PTransform):
    """(split, serialized) -> ``<output>/<prefix(split)>-SSSSS-of-NNNNN.tfrecord`` per split."""

    def __init__(self, output: str, shards: Dict[str, int], with_features: bool):
        super().__init__()
        self.output, self.shards, self.with_features = output, dict(shards), with_features

    def expand(self, keyed):
        names = list(self.shards)
        parts = keyed | "By split" >> beam.Partition(lambda kv, n: names.index(kv[0]), len(names))
        for name, part in zip(names, parts):
            prefix = records.split_prefix(name) if self.with_features else records.captions_prefix(name)
            (part
             | f"Values {name}" >> beam.Values()
             | f"Write {name}" >> beam.io.WriteToTFRecord(
                 pio.join(self.output, prefix), file_name_suffix=records.RECORD_SUFFIX,
                 num_shards=self.shards[name], shard_name_template="-SSSSS-of-NNNNN"))
        return keyed.pipeline
