"""``captionbeam captions``: clean captions, build the vocabulary over the training split, join the
captions with the feature records by image id and write per-split training TFRecords.

The job (one composite transform per step, in :mod:`pipelines.caption_steps`)::

    captions file ─ ReadCaptions (parse + clean; bad lines -> dead letters) ─┐
    split files (driver-read ids) ───────────────────────────────────────────┼─ CoGroupByKey by image id
    features-*.tfrecord ─ ReadFeatures (parse + check shape) ────────────────┘        │
                                                                         ClassifyImages: one outcome per id
                                            joined images ──┬── tokens of --vocab-split ── BuildVocabulary
                                                            └── EncodeCaptions (vocabulary as side input) ── WriteToTFRecord per split
                                 accounting (category, id) + per-split stats + dead-letter counts ── WriteSummary

Every image id ends up in exactly one accounting category (``JOIN_CATEGORIES``) or in a split's
records; ``stats.json`` and ``<output>/join/<category>.txt`` list them, so nothing is silently dropped.

Outputs (``<output>`` local or gs://): ``vocab.txt``, ``token_counts.tsv``, ``stats.json``,
``features_spec.json`` (copied, with ``--features``), ``<split>-NNNNN-of-NNNNN.tfrecord``
(``records.training_example``) or ``<split>-captions-NNNNN-of-NNNNN.tfrecord`` (``records.caption_example``)
without features, ``join/<category>.txt`` and ``dead_letters/dead_letters-*.jsonl``.
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import apache_beam as beam
import numpy as np

from captionbeam.pipelines.options import Runner
import captionbeam.pipelines.io as pio
from captionbeam.model import records
from captionbeam.pipelines import progress
from captionbeam.model.data_stats import STATS_FILE, DataStats
from captionbeam.model.vocab import VOCAB_FILE, Vocabulary
from captionbeam.pipelines.caption_steps import (DEFAULT_MAX_CAPTION_TOKENS, JOIN_CATEGORIES, EncodeCaptions, JoinByImage,
                                     MergeSplitStats, ReadCaptions, ReadFeatures, SplitStats, WriteSplits,
                                     ParseCaptionFile)
from captionbeam.pipelines.counters import query_counters
from captionbeam.pipelines.deadletter import WriteDeadLetters, dead_letters_dir
from captionbeam.pipelines.vocabulary import BuildVocabulary, CountTokens, token_counts_text

log = logging.getLogger(__name__)

TOKEN_COUNTS_FILE = "token_counts.tsv"
JOIN_DIR = "join"
DEFAULT_SPLIT = "train"
SPLIT_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
TARGET_SHARD_BYTES = 128 * 1024 * 1024



class CaptionsConfigError(ValueError):
    """A bad command line or input found before the job starts; the message names the flag."""


class CaptionsDataError(ValueError):
    """The job ran but its output cannot train anything (no image joined, or no word in the vocabulary)."""


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class CaptionsConfig:
    captions: str
    output: str
    fmt: str = "auto"
    splits: Tuple[Tuple[str, str], ...] = ()     # (name, split file), in command-line order
    clean: str = "seed"
    min_count: int = 5
    vocab_split: str = DEFAULT_SPLIT
    vocab: Optional[str] = None                  # an existing vocab.txt instead of building one
    features: Optional[str] = None               # directory written by `captionbeam features`
    num_shards: int = 0                          # 0: auto (about 128 MiB per shard)
    overwrite: bool = False
    keep_empty: bool = False                     # keep captions that clean to nothing as <start> <end>
    max_caption_tokens: int = DEFAULT_MAX_CAPTION_TOKENS   # longer captions are cut (counted in stats.json)
    force: bool = False                          # take the output's lease from a run that holds it (the command's)

    @property
    def split_names(self) -> Tuple[str, ...]:
        return tuple(n for n, _ in self.splits) or (DEFAULT_SPLIT,)


@dataclass
class Plan:
    """What the driver found out before the job: resolved format, split ids, features, shards."""
    config: CaptionsConfig
    fmt: str
    split_ids: Dict[str, List[str]]
    feature_files: List[str] = field(default_factory=list)
    features_spec: Optional[records.FeaturesSpec] = None
    features_spec_text: Optional[str] = None
    features_compression: str = "auto"          # from features_spec.json's compression
    vocabulary: Optional[Vocabulary] = None
    shards: Dict[str, int] = field(default_factory=dict)

    @property
    def with_features(self) -> bool:
        return self.config.features is not None

    def summary_lines(self) -> List[str]:
        """What the job will do, for a caller that prints the plan before running it."""
        splits = ", ".join(f"{name} {len(self.split_ids.get(name, ()))} ids" if name in self.split_ids else name
                           for name in self.config.split_names)
        source = (f"joined with {len(self.feature_files)} feature file(s) of {self.config.features}"
                  if self.with_features else "captions only")
        vocab = (f"vocabulary {self.config.vocab}" if self.vocabulary is not None else
                 f"vocabulary built over {self.config.vocab_split} (min count {self.config.min_count})")
        return [f"captions: {self.config.captions} ({self.fmt}, --clean {self.config.clean}) -> {self.config.output}",
                f"  splits: {splits}; {source}; {vocab}"]


def _head(path: str, n: int = 4096) -> str:
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read(n).decode("utf-8", errors="replace")


def existing_outputs(output: str) -> List[str]:
    """Files of an earlier captions run in ``output``."""
    patterns = [pio.join(output, VOCAB_FILE), pio.join(output, STATS_FILE), pio.join(output, TOKEN_COUNTS_FILE),
                pio.join(output, "*" + records.RECORD_SUFFIX), pio.join(output, JOIN_DIR, "*.txt"),
                pio.join(dead_letters_dir(output), "*.jsonl"), pio.join(output, records.FEATURES_SPEC_FILE)]
    try:
        return pio.match(patterns)
    except Exception:  # a missing directory matches nothing (some filesystems raise)
        return []


def _estimate_shards(n_records: int, record_bytes: int) -> int:
    return max(1, math.ceil(n_records * record_bytes / TARGET_SHARD_BYTES))


def plan(config: CaptionsConfig) -> Plan:
    """Validate the configuration against the inputs (fail fast, naming the flag) and resolve
    everything the job needs to know up front."""
    from captionbeam.model.caption_files import FORMATS, detect_format, parse_split_file
    from captionbeam.model.text import CLEANERS

    if config.fmt != "auto" and config.fmt not in FORMATS:
        raise CaptionsConfigError(f"--format: unknown format {config.fmt!r}; choose auto or one of {', '.join(FORMATS)}")
    if config.clean not in CLEANERS:
        raise CaptionsConfigError(f"--clean: unknown rule {config.clean!r}; choose one of {', '.join(sorted(CLEANERS))}")
    if config.min_count < 1:
        raise CaptionsConfigError(f"--min-count must be at least 1, got {config.min_count}")
    if config.num_shards < 0:
        raise CaptionsConfigError(f"--num-shards must be 0 (auto) or positive, got {config.num_shards}")
    if config.max_caption_tokens < 1:
        raise CaptionsConfigError(f"--max-caption-tokens must be at least 1, got {config.max_caption_tokens}")
    if not pio.exists(config.captions):
        raise CaptionsConfigError(f"--captions: file not found: {config.captions}")
    if not _head(config.captions).strip():
        raise CaptionsConfigError(f"--captions {config.captions}: the file is empty")
    fmt = config.fmt if config.fmt != "auto" else detect_format(config.captions, _head(config.captions))

    names = [n for n, _ in config.splits]
    for name in names:
        if not SPLIT_NAME_RE.match(name):
            raise CaptionsConfigError(f"--split: split name {name!r} must be letters, digits or '_'")
    if len(set(names)) != len(names):
        raise CaptionsConfigError(f"--split: split names must be unique, got {names}")
    split_ids: Dict[str, List[str]] = {}
    for name, path in config.splits:
        if not pio.exists(path):
            raise CaptionsConfigError(f"--split {name}={path}: file not found")
        ids = parse_split_file(pio.read_text(path))
        if not ids:
            raise CaptionsConfigError(f"--split {name}={path}: the split file names no images")
        split_ids[name] = ids
    if config.vocab is None and config.vocab_split not in config.split_names:
        raise CaptionsConfigError(f"--vocab-split: {config.vocab_split!r} is not one of the splits "
                                  f"({', '.join(config.split_names)}); name it with --split {config.vocab_split}=FILE")

    vocabulary = None
    if config.vocab is not None:
        if not pio.exists(config.vocab):
            raise CaptionsConfigError(f"--vocab: file not found: {config.vocab}")
        try:
            vocabulary = Vocabulary.from_text(pio.read_text(config.vocab))
        except ValueError as e:
            raise CaptionsConfigError(f"--vocab {config.vocab}: {e}") from None

    p = Plan(config, fmt, split_ids, vocabulary=vocabulary)
    record_bytes = 200  # caption ids only
    if config.features is not None:
        spec_path = pio.join(config.features, records.FEATURES_SPEC_FILE)
        if not pio.exists(spec_path):
            raise CaptionsConfigError(f"--features: {spec_path} not found (run `captionbeam features --output "
                                      f"{config.features}` first)")
        p.features_spec_text = pio.read_text(spec_path)
        try:
            p.features_spec = records.FeaturesSpec.from_json(p.features_spec_text)
        except (ValueError, TypeError, KeyError) as e:
            raise CaptionsConfigError(f"--features: bad {spec_path}: {e}") from None
        compression = (p.features_spec.compression or "").upper()
        p.features_compression = {"GZIP": "gzip", "NONE": "uncompressed"}.get(compression, "auto")
        p.feature_files = pio.match([pio.join(config.features, f"{records.FEATURES_PREFIX}-*-of-*{records.RECORD_SUFFIX}*")])
        if not p.feature_files:
            raise CaptionsConfigError(f"--features: no {records.FEATURES_PREFIX}-*-of-*{records.RECORD_SUFFIX} "
                                      f"files in {config.features}")
        record_bytes += 4 * int(np.prod(p.features_spec.feature_shape)) + 64

    old = existing_outputs(config.output)
    if old and not config.overwrite:
        raise CaptionsConfigError(f"--output: {config.output} already holds {len(old)} file(s) of an earlier run "
                                  f"(e.g. {old[0]}); pass --overwrite to replace them")

    for name in config.split_names:
        if config.num_shards:
            p.shards[name] = config.num_shards
        else:
            n = len(split_ids[name]) if name in split_ids else (
                p.features_spec.count if p.features_spec and p.features_spec.count else 1000)
            p.shards[name] = _estimate_shards(n, record_bytes)
    return p


# ----------------------------------------------------------------------------- summary files
class _WriteSummary(beam.DoFn):
    """Writes vocab.txt, token_counts.tsv, the join lists, features_spec.json and stats.json."""

    def __init__(self, plan: "Plan"):
        c = plan.config
        self.output = c.output
        self.header = {
            "captions_file": c.captions, "format": plan.fmt, "clean": c.clean, "min_count": c.min_count,
            "vocab_split": None if c.vocab else c.vocab_split, "vocab_source": c.vocab or "built",
            "features": c.features, "split_files": {n: p for n, p in c.splits}, "keep_empty": c.keep_empty,
            "max_caption_tokens": c.max_caption_tokens,
        }
        self.split_names = list(c.split_names)
        self.split_file_images = {n: len(set(ids)) for n, ids in plan.split_ids.items()}
        self.with_features = plan.with_features
        self.spec_text = plan.features_spec_text
        self.shards = dict(plan.shards)
        self.vocab_given = c.vocab is not None

    def process(self, _, vocabulary, counts, split_stats, accounting, dead_counts, truncated):
        join_lists = {cat: [] for cat in JOIN_CATEGORIES}
        for cat, ids in accounting:
            join_lists[cat] = sorted(ids)
        if not self.vocab_given:
            pio.write_text(pio.join(self.output, TOKEN_COUNTS_FILE), token_counts_text(counts))
        pio.write_text(pio.join(self.output, VOCAB_FILE), vocabulary.to_text())
        lists = {}
        for cat, ids in join_lists.items():
            path = pio.join(self.output, JOIN_DIR, f"{cat}.txt")
            pio.write_text(path, "".join(i + "\n" for i in ids))
            lists[cat] = path
        if self.spec_text is not None:
            pio.write_text(pio.join(self.output, records.FEATURES_SPEC_FILE), self.spec_text)

        per_split = {name: SplitStats() for name in self.split_names}
        for name, stats in split_stats:
            per_split[name] = per_split.get(name, SplitStats()).merge(stats)
        splits = {}
        for name in self.split_names:
            d = per_split[name].to_dict()
            if name in self.split_file_images:
                d["images_in_split_file"] = self.split_file_images[name]
            prefix = records.split_prefix(name) if self.with_features else records.captions_prefix(name)
            d["records"] = records.shard_pattern(self.output, prefix)
            d["shards"] = self.shards[name]
            splits[name] = d
        dead = dict(sorted(dead_counts))
        joined = sum(s.images for s in per_split.values())
        stats = DataStats(
            **self.header,
            split_order=self.split_names,
            record_kind="examples" if self.with_features else "captions",
            vocab_size=len(vocabulary),
            tokens_in_vocab_split=sum(n for _, n in counts),
            distinct_tokens_in_vocab_split=len(counts),
            max_token_count=max((n for _, n in counts), default=0),
            truncated={"captions": len(truncated), "tokens_cut": sum(truncated),
                       "max_caption_tokens": self.header["max_caption_tokens"]},
            max_caption_length=max((s.max_length for s in per_split.values()), default=0),
            splits=splits,
            join={"joined": joined, **{cat: len(ids) for cat, ids in join_lists.items()},
                  "images_total": joined + sum(len(ids) for ids in join_lists.values()), "lists": lists},
            dead_letters={"total": sum(dead.values()), **dead})
        pio.write_text(pio.join(self.output, STATS_FILE), stats.to_json())
        yield stats


# ----------------------------------------------------------------------------- the job
def build(pipeline: beam.Pipeline, p: Plan, progress_dir: Optional[str] = None) -> None:
    """Add the whole captions job to ``pipeline``."""
    c = p.config
    caps = pipeline | "ReadCaptions" >> ReadCaptions(c.captions, p.fmt, c.clean, c.keep_empty, c.max_caption_tokens)
    split_pairs = sorted({(iid, name) for name, ids in p.split_ids.items() for iid in ids})
    splits = pipeline | "Split ids" >> beam.Create(split_pairs)
    inputs = {"captions": caps.captions, "splits": splits}
    dead = [caps.dead]
    if p.with_features:
        feats = pipeline | "ReadFeatures" >> ReadFeatures(p.feature_files, p.features_spec.feature_shape,
                                                             p.features_compression)
        inputs["features"] = feats.features
        dead.append(feats.dead)
    joined = inputs | "JoinByImage" >> JoinByImage(p.with_features, None if c.splits else DEFAULT_SPLIT)
    dead.append(joined.dead)
    progress.count_done((joined.images, joined.accounting), progress_dir)     # one per image id

    if p.vocabulary is not None:
        counts = pipeline | "No counts" >> beam.Create([[]])
        vocabulary = pipeline | "Given vocabulary" >> beam.Create([p.vocabulary])
    else:
        vocab_split = c.vocab_split
        counts = (joined.images
                  | "Vocab split" >> beam.Filter(lambda ex: ex.split == vocab_split)
                  | "Tokens" >> beam.FlatMap(lambda ex: (t for cap in ex.captions for t in cap))
                  | "CountTokens" >> CountTokens())
        vocabulary = counts | "BuildVocabulary" >> BuildVocabulary(c.min_count, counted=True)

    encoded = joined.images | "EncodeCaptions" >> EncodeCaptions(vocabulary, p.with_features)
    encoded.records | "WriteSplits" >> WriteSplits(c.output, p.shards, p.with_features)

    all_dead = tuple(dead) | "All dead letters" >> beam.Flatten()
    all_dead | "WriteDeadLetters" >> WriteDeadLetters(c.output)
    dead_counts = (all_dead
                   | "Dead stage" >> beam.Map(lambda d: (d.stage, 1))
                   | "Dead per stage" >> beam.CombinePerKey(sum))
    split_stats = encoded.stats | "Stats per split" >> beam.CombinePerKey(MergeSplitStats())
    accounting = joined.accounting | "Ids per category" >> beam.GroupByKey()
    (pipeline
     | "Summary trigger" >> beam.Create([None])
     | "WriteSummary" >> beam.ParDo(
         _WriteSummary(p), beam.pvalue.AsSingleton(vocabulary), beam.pvalue.AsSingleton(counts),
         beam.pvalue.AsList(split_stats), beam.pvalue.AsList(accounting), beam.pvalue.AsList(dead_counts),
         beam.pvalue.AsList(caps[ParseCaptionFile.TRUNCATED])))


def clear_outputs(output: str) -> int:
    old = existing_outputs(output)
    pio.delete(old)
    return len(old)


@dataclass
class RunResult:
    stats: DataStats
    seconds: float
    counters: Dict[str, int]


def run(config: CaptionsConfig, runner: Runner = None, planned: Optional["Plan"] = None) -> RunResult:
    """Plan, run the job to completion and return ``stats.json`` (read back) and the counters."""
    from captionbeam.pipelines.options import new_pipeline

    p = planned or plan(config)
    if config.overwrite:
        n = clear_outputs(config.output)
        if n:
            log.info("--overwrite: removed %d file(s) of an earlier run in %s", n, config.output)
    pio.makedirs(config.output)
    pio.remove_stale_beam_temp([config.output, dead_letters_dir(config.output)])
    start = time.time()
    pipeline = new_pipeline(runner)
    progress_dir = progress.progress_dir(config.output)
    build(pipeline, p, progress_dir)
    with progress.ProgressReporter("captions", progress_dir, None):
        result = pipeline.run()
        result.wait_until_finish()
    seconds = time.time() - start
    stats = DataStats.from_json(pio.read_text(pio.join(config.output, STATS_FILE)))
    check_usable(stats)
    return RunResult(stats, seconds, query_counters(result))


def check_usable(stats: DataStats) -> None:
    """:class:`CaptionsDataError` when the written records cannot train a model: no image joined (an
    empty or all-bad captions file, or ids that match no feature / split), or a built vocabulary with no
    word beyond the 4 reserved tokens (``--min-count`` above every word's count)."""
    j, d = stats.join, stats.dead_letters
    if j.get("joined", 0) == 0:
        raise CaptionsDataError(
            f"no image was written: {j.get('images_total', 0)} image id(s) in the inputs, none joined "
            f"({', '.join(f'{j[c]} {c}' for c in JOIN_CATEGORIES if j.get(c)) or 'no captions read'}; "
            f"{d.get('total', 0)} dead letter(s)); the output's join/*.txt and dead_letters/ say why")
    if stats.vocab_source == "built" and stats.vocab_size <= 4:
        raise CaptionsDataError(
            f"--min-count {stats.min_count}: no word of --vocab-split {stats.vocab_split} is seen that often "
            f"(the most frequent is seen {stats.max_token_count} time(s)): the vocabulary would be only "
            f"the 4 reserved tokens and every caption <unk>; lower --min-count")


def summary_lines(stats: DataStats, seconds: Optional[float] = None) -> List[str]:
    """Human-readable summary of a ``stats.json``."""
    lines = [f"captions: {stats.captions_file} ({stats.format}, --clean {stats.clean})"]
    lines.append(f"vocabulary: {stats.vocab_size} tokens incl. 4 reserved "
                 + (f"(min count {stats.min_count} over {stats.vocab_split}: "
                    f"{stats.distinct_tokens_in_vocab_split} distinct, {stats.tokens_in_vocab_split} in all)"
                    if stats.vocab_source == "built" else f"(from {stats.vocab_source})"))
    lines.append(f"longest caption: {stats.max_caption_length} tokens with <start>/<end>")
    cut = stats.truncated or {}
    if cut.get("captions"):
        lines.append(f"truncated: {cut['captions']} caption(s) longer than --max-caption-tokens "
                     f"{cut['max_caption_tokens']} ({cut['tokens_cut']} token(s) cut)")
    lines.append(f"{'split':<10}{'images':>8}{'captions':>10}{'tokens':>10}{'unk rate':>10}{'max len':>9}{'shards':>8}")
    for name in stats.ordered_splits():
        s = stats.splits[name]
        lines.append(f"{name:<10}{s['images']:>8}{s['captions']:>10}{s['tokens']:>10}{s['unknown_rate']:>10.4f}"
                     f"{s['max_caption_length']:>9}{s['shards']:>8}")
    j = stats.join
    parts = [f"{j['joined']} joined"] + [f"{j[c]} {c.replace('_', ' ')}" for c in JOIN_CATEGORIES if j.get(c)]
    lines.append(f"join ({'captions + features' if stats.features else 'captions only'}, "
                 f"{j['images_total']} image ids): " + ", ".join(parts))
    d = stats.dead_letters
    if d["total"]:
        lines.append("dead letters: " + ", ".join(f"{k} {v}" for k, v in d.items() if k != "total")
                     + f" (total {d['total']})")
    else:
        lines.append("dead letters: none")
    if seconds is not None:
        caps = sum(s["captions"] for s in stats.splits.values())
        lines.append(f"done in {seconds:.1f}s ({caps / max(seconds, 1e-9):.0f} captions/s)")
    return lines
