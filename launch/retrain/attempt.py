"""One retraining attempt: what landed -> features for new content only -> training records -> warm
start, train, evaluate -> the gate decides; one function per phase.

An attempt is a transaction (the caller holds the root's lease, :mod:`pipelines.lease`): each batch
moves through durable phases recorded in ``ROOT/state/attempts/<batch>.json`` (:data:`PHASES`). Before
the decision nothing the root serves or reads as settled changes (its splits, captions, ``CURRENT``):
a kill -9 before ``decided`` is redone from the start by the next run (this batch's features are
replaced, the abandoned version folder is skipped). The decision is recorded first, with everything
the commit needs; the commit (version.json, the root's captions and train split, ``CURRENT``, the
consumed marker) is idempotent and :func:`recover` finishes it at the next start, so a kill at any
point ends in exactly one outcome: the batch promoted (``CURRENT`` names its version) or rejected, and
then consumed."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import captionbeam.pipelines.io as pio
from captionbeam.launch.retrain import data, manifest, stages
from captionbeam.launch.retrain.gate import promotion_decision
from captionbeam.launch.retrain.root import (CURRENT_FILE, ModelRoot, RetrainError, RootSettings, VersionInfo, next_batch, now,
                                 read_settings, write_atomic, write_consumed)
from captionbeam.launch.staging import local_dir
from captionbeam.pipelines.crash_points import crash_point

# the durable phases of a batch, in order (``AttemptResult.phase``)
PHASES = ("landed", "featurised", "records", "trained", "decided", "consumed")


@dataclass
class RetrainConfig:
    root: str
    images: List[str] = field(default_factory=list)      # globs of landed images
    captions: List[str] = field(default_factory=list)    # caption files for them (any supported format)
    extend_vocab: bool = False
    min_new: int = 1
    epochs: int = 3
    batch_size: int = 32
    train_args: List[str] = field(default_factory=list)
    eval_split: str = "test"
    beam_size: int = 1
    tolerance: float = 0.05
    min_drop: float = 0.005
    pipeline_args: List[str] = field(default_factory=list)


@dataclass
class AttemptResult:
    batch: str
    status: str                     # waiting | promoted | rejected | nothing-new | failed
    new_images: int = 0
    featurised: int = 0
    reused_features: int = 0
    without_captions: int = 0
    version: Optional[str] = None
    current: Optional[str] = None
    old_metrics: Dict[str, float] = field(default_factory=dict)
    new_metrics: Dict[str, float] = field(default_factory=dict)
    reasons: List[str] = field(default_factory=list)
    seconds: float = 0.0
    phase: str = ""                                        # one of PHASES once recorded (state/attempts/<batch>.json)
    commit: Dict[str, object] = field(default_factory=dict)  # from ``decided`` on: what the commit writes

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AttemptResult":
        d = json.loads(text)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def journal_path(r: ModelRoot, batch: str) -> str:
    return r.path("state", "attempts", f"{batch}.json")


def record_phase(r: ModelRoot, result: AttemptResult, phase: str) -> None:
    """Make ``phase`` durable for this batch (an atomic replace of its journal)."""
    result.phase = phase
    write_atomic(journal_path(r, result.batch), result.to_json() + "\n")
    crash_point(f"retrain:{phase}")


@dataclass
class Records:
    """What phase 3 built for this attempt (under ``ROOT/attempts/<batch>/``)."""
    captions_file: str
    train_file: str
    train_ids: List[str]
    vocab_file: str
    tokens: Optional[List[str]]      # the extended vocabulary, or None (the old one)
    vocab_size: int
    data_dir: str


def _log(batch: str, message: str) -> None:
    print(f"[{batch}] {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- 1. what landed
def new_with_captions(r: ModelRoot, config: RetrainConfig, result: AttemptResult,
                      new_caps: Dict[str, List[str]]) -> Optional[List[Tuple[str, str]]]:
    """(path, sha256) of the landed images with captions, or None when this attempt stops here
    (nothing, or fewer than --min-new). Only paths with captions, once there are enough, are hashed."""
    pending = manifest.landed(r, config.images)
    with_caps = [p for p in pending if pio.image_id_from_path(p) in new_caps]
    result.without_captions = len(pending) - len(with_caps)
    result.new_images = len(with_caps)
    if not with_caps:
        result.reasons.append("no new images with captions" + (f" ({result.without_captions} without captions "
                                                                f"wait for them)" if result.without_captions else ""))
        return None
    if len(with_caps) < config.min_new:
        result.status = "waiting"
        result.reasons.append(f"{len(with_caps)} new image(s) with captions, fewer than --min-new {config.min_new}")
        return None
    _log(result.batch, f"{len(with_caps)} new image(s) with captions under {', '.join(config.images)}"
         + (f"; {result.without_captions} still without captions" if result.without_captions else ""))
    hashed, refused = manifest.content_hashes(with_caps)
    for e in refused:                  # a FIFO / huge file / dangling link: named, never opened or read whole
        result.reasons.append(f"refused {e.path}: {e.error}: {e.message}")
        _log(result.batch, f"refused {e.path}: {e.error}: {e.message}")
    result.new_images = len(hashed)
    return hashed or None


# ----------------------------------------------------------------------------- 2. features
def featurise_new_content(r: ModelRoot, config: RetrainConfig, result: AttemptResult,
                          with_caps: Sequence[Tuple[str, str]]) -> None:
    """Features only for content the root's sidecar does not list; they join the root as this batch."""
    manifest.remove_batch_features(r, result.batch)   # a killed attempt's copies of this batch, maybe partial
    known = manifest.feature_hashes([r.path(manifest.FEATURES_DIR)])
    todo = [p for p, s in with_caps if s not in known]
    result.featurised, result.reused_features = len(todo), len(with_caps) - len(todo)
    if todo:
        out = stages.featurise(r, todo, pio.join(r.path("attempts", result.batch), "features"), config.pipeline_args)
        manifest.add_features(r, out, result.batch)
    _log(result.batch, f"features: {result.featurised} extracted, {result.reused_features} already in the manifest")


# ----------------------------------------------------------------------------- 3. records
def build_records(r: ModelRoot, config: RetrainConfig, settings: RootSettings, result: AttemptResult,
                  new_ids: Sequence[str], new_caps: Dict[str, List[str]], current: str) -> Records:
    """All captions so far + the new ones, the new images in the training split, the vocabulary (frozen
    or extended), and the training records over every feature of the root."""
    from captionbeam.model.vocab import Vocabulary, extended_vocabulary
    attempt = r.path("attempts", result.batch)
    merged = dict(data.read_captions([r.path("data", "captions.txt")], "flickr8k"))
    for i in new_ids:
        merged[i] = new_caps[i]
    captions_file = pio.join(attempt, "captions.txt")
    pio.write_text(captions_file, data.flickr8k_text(merged))
    train_ids = data.read_split(r.path("data", "train.txt"))
    train_ids += [i for i in new_ids if i not in set(train_ids)]
    train_file = pio.join(attempt, "train.txt")
    pio.write_text(train_file, data.split_text(train_ids))
    vocab_file = pio.join(r.version_dir(current), "vocab.txt")
    old_vocab = Vocabulary.from_text(pio.read_text(vocab_file))
    tokens = None
    if config.extend_vocab:
        tokens = extended_vocabulary(old_vocab.tokens, [c for i in new_ids for c in new_caps[i]], settings.clean,
                                     settings.min_count)
        vocab_file = pio.join(attempt, "vocab.txt")
        pio.write_text(vocab_file, Vocabulary(tuple(tokens)).to_text())
        _log(result.batch, f"vocabulary extended {len(old_vocab)} -> {len(tokens)} tokens")
    data_dir = stages.build_data(r, settings, pio.join(attempt, "data"), vocab_file, captions_file, train_file,
                                 config.pipeline_args)
    return Records(captions_file, train_file, train_ids, vocab_file, tokens,
                   len(tokens) if tokens else len(old_vocab), data_dir)


# ----------------------------------------------------------------------------- 4. train and evaluate
def train_and_evaluate(r: ModelRoot, config: RetrainConfig, result: AttemptResult, records: Records,
                       current: str, version: str) -> None:
    """Warm-start ``version`` from ``current``, train, and score both on the fixed split (the old one's
    stored scores when the records are unchanged for it)."""
    from captionbeam.model.warm_start import WarmStartError, write_warm_start
    old_dir = r.version_dir(current)
    with local_dir(records.data_dir) as local_data, local_dir(old_dir) as local_old, \
            local_dir(r.version_dir(version), download=False, upload=True) as local_new:
        try:
            ws = write_warm_start(local_old, local_new, records.tokens)
        except WarmStartError as e:
            raise RetrainError(str(e)) from None
        _log(result.batch, f"{version}: warm start from {current} (vocabulary {ws['vocab_size']})")
        stages.train(local_data, local_new, local_old, config.epochs, config.batch_size, config.train_args)
        with tempfile.TemporaryDirectory(prefix="captionbeam-eval-") as tmp:
            result.new_metrics = stages.evaluate(local_new, local_data, config.eval_split, config.beam_size,
                                                 os.path.join(tmp, "new"))
            old_info = r.info(current)
            if config.extend_vocab or not old_info.metrics:
                result.old_metrics = stages.evaluate(local_old, local_data, config.eval_split, config.beam_size,
                                                     os.path.join(tmp, "old"))
            else:
                result.old_metrics = dict(old_info.metrics)


# ----------------------------------------------------------------------------- 5. the gate
def decide(r: ModelRoot, config: RetrainConfig, result: AttemptResult, records: Records, current: str,
           version: str, with_caps: Sequence[Tuple[str, str]]) -> None:
    """Record the decision (phase ``decided``, with everything the commit writes), then commit it."""
    decision = promotion_decision(result.old_metrics, result.new_metrics, config.tolerance, config.min_drop)
    result.reasons += decision.reasons
    info = VersionInfo(name=version, parent=current, created=now(), metrics=result.new_metrics,
                       train_images=len(records.train_ids), vocab_size=records.vocab_size,
                       batch=result.batch, promoted=decision.promote, decision=decision.reasons)
    result.status = "promoted" if decision.promote else "rejected"
    attempt = ("attempts", result.batch)     # the commit's inputs, named relative to the root
    for path in (records.captions_file, records.train_file):
        if path != r.path(*attempt, pio.basename(path)):
            raise RetrainError(f"{path}: an attempt's records must be under {r.path(*attempt)}")
    result.commit = {"version_info": json.loads(info.to_json()), "consumed": [list(x) for x in with_caps],
                     "captions_file": "/".join(attempt + (pio.basename(records.captions_file),)),
                     "train_file": "/".join(attempt + (pio.basename(records.train_file),))}
    record_phase(r, result, "decided")
    commit(r, result)


def commit(r: ModelRoot, result: AttemptResult) -> None:
    """The decided batch's commit, each step idempotent (a re-run after a kill repeats them all):
    version.json; on promotion the root's captions and train split, then ``CURRENT``; the consumed
    marker; phase ``consumed``."""
    c = result.commit
    info = VersionInfo(**c["version_info"])
    result.status = "promoted" if info.promoted else "rejected"
    r.write_info(info)
    crash_point("retrain:version-written")
    if info.promoted:
        write_atomic(r.path("data", "captions.txt"), pio.read_text(r.path(*c["captions_file"].split("/"))))
        write_atomic(r.path("data", "train.txt"), pio.read_text(r.path(*c["train_file"].split("/"))))
        crash_point("retrain:splits-written")
        r.set_current(info.name)
        crash_point("retrain:current-moved")
        result.current = info.name
    write_consumed(r, result.batch, [tuple(x) for x in c["consumed"]])
    record_phase(r, result, "consumed")


def recover(r: ModelRoot) -> List[AttemptResult]:
    """Finish every batch a killed run left ``decided`` but not ``consumed`` (its commit, repeated);
    returns them. Batches killed before their decision are simply redone by the next attempt."""
    finished = []
    for p in pio.match([r.path("state", "attempts", "b*.json")]):
        try:
            result = AttemptResult.from_json(pio.read_text(p))
        except (ValueError, TypeError):
            continue   # an attempt record of an older layout: nothing to finish
        if result.phase == "decided":
            _log(result.batch, f"finishing the {result.status} decision a stopped run recorded")
            commit(r, result)
            finished.append(result)
    return finished


# ----------------------------------------------------------------------------- the attempt
def retrain_once(config: RetrainConfig) -> AttemptResult:
    """Finish a decided batch a stopped run left, then featurise what is new, rebuild the records,
    warm-start, evaluate, promote or keep the old. Every attempt that finds new images leaves
    ``state/attempts/<batch>.json`` (its phase, see the module doc), a failed one too (status ``failed``,
    the error in its reasons; a batch failed before its decision is not consumed: the next attempt redoes it)."""
    start = time.time()
    r = ModelRoot(config.root)
    settings = read_settings(r)
    current = r.current()
    if current is None:
        raise RetrainError(f"{r.path(CURRENT_FILE)} not found: initialise the root first")
    if recover(r):
        current = r.current()
    result = AttemptResult(batch=next_batch(r), status="nothing-new", current=current)
    new_caps = data.read_captions(config.captions) if config.captions else {}
    with_caps = new_with_captions(r, config, result, new_caps)
    if with_caps is None:
        result.seconds = time.time() - start
        return result
    record_phase(r, result, "landed")
    try:
        _attempt(r, config, settings, result, with_caps, new_caps, current)
    except BaseException as e:
        if result.phase == "decided":   # the decision stands; the next run finishes its commit (recover)
            raise
        result.status = "failed"
        result.reasons.append(f"failed: {type(e).__name__}: {e}")
        result.seconds = time.time() - start
        _write_record(r, result)
        raise
    result.seconds = time.time() - start
    if result.phase != "consumed":      # nothing to train (all landed images already in a split)
        write_consumed(r, result.batch, with_caps)
        record_phase(r, result, "consumed")
    return result


def _write_record(r: ModelRoot, result: AttemptResult) -> None:
    write_atomic(journal_path(r, result.batch), result.to_json() + "\n")


def _attempt(r: ModelRoot, config: RetrainConfig, settings: RootSettings, result: AttemptResult,
             with_caps: Sequence[Tuple[str, str]], new_caps: Dict[str, List[str]], current: str) -> None:
    featurise_new_content(r, config, result, with_caps)
    record_phase(r, result, "featurised")
    # images already in a split (e.g. landed again) keep their split and captions: no test image leaks into train
    new_ids = sorted({pio.image_id_from_path(p) for p, _ in with_caps} - data.ids_in_splits(r))
    if not new_ids:
        result.reasons.append(f"all {len(with_caps)} landed image(s) are already in the root's splits")
        return
    result.reasons.append(f"{len(new_ids)} image(s) join the training split")
    records = build_records(r, config, settings, result, new_ids, new_caps, current)
    version = result.version = r.next_version()
    record_phase(r, result, "records")
    train_and_evaluate(r, config, result, records, current, version)
    record_phase(r, result, "trained")
    decide(r, config, result, records, current, version, with_caps)


def describe(result: AttemptResult) -> List[str]:
    lines = [f"{result.batch}: {result.status}"
             + (f" — {result.version} is now current" if result.status == "promoted" and result.version else "")
             + (f" — {result.current} stays current" if result.status == "rejected" else "")]
    if result.new_images:
        lines.append(f"  new images: {result.new_images} ({result.featurised} featurised, "
                     f"{result.reused_features} reused from the feature manifest)"
                     + (f"; {result.without_captions} without captions" if result.without_captions else ""))
    for reason in result.reasons:
        lines.append(f"  {reason}")
    if result.seconds:
        lines.append(f"  {result.seconds:.1f}s")
    return lines
