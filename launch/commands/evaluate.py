"""``captionbeam evaluate``: decode a split of a ``--data`` directory with a trained model, write the
predictions, and print BLEU-1..4 (NLTK) plus COCO metrics (METEOR, ROUGE-L, CIDEr-D)."""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import captionbeam.pipelines.io as pio
from captionbeam.launch.command_args import CommandError
from captionbeam.launch.exit_codes import OK
from captionbeam.launch.commands.score import add_coco_arguments, scoring_options
from captionbeam.model.caption_files import FORMATS

from captionbeam.launch.arg_types import finite_float, output_file

HELP = "decode a split with a trained model and print BLEU / METEOR / ROUGE-L / CIDEr-D"
log = logging.getLogger("captionbeam.evaluate")


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """Decoding flags shared with ``caption`` and ``export``."""
    g = parser.add_argument_group("decoding")
    g.add_argument("--beam-size", type=int, default=1, help="beam width; 1 = greedy decoding (default: 1)")
    g.add_argument("--length-penalty", type=finite_float, default=0.0, metavar="ALPHA",
                   help="beam search ranks captions by log-prob / length**ALPHA (0 = raw log-prob, default; "
                        "1 = mean per token)")
    g.add_argument("--max-length", type=int, default=None,
                   help="most tokens generated, <end> included (default: the longest training caption)")
    g.add_argument("--batch-size", type=int, default=64, help="images decoded together (default: 64)")
    g.add_argument("--weights", choices=("best", "last"), default="best",
                   help="which weights of the model dir: best (lowest validation loss, default) or last")


@dataclass(frozen=True)
class Decoding:
    """The decoding flags shared with ``caption`` and ``export`` (:func:`add_decoding_arguments`), typed."""
    beam_size: int = 1
    length_penalty: float = 0.0
    max_length: Optional[int] = None
    batch_size: int = 64
    weights: str = "best"

    @classmethod
    def from_args(cls, args) -> "Decoding":
        return cls(beam_size=args.beam_size, length_penalty=args.length_penalty, max_length=args.max_length,
                   batch_size=args.batch_size, weights=args.weights)

    def check(self) -> "Decoding":
        """``CommandError`` naming the first decoding flag out of range (the CLI exits 2)."""
        for flag, value, least in (("--beam-size", self.beam_size, 1), ("--max-length", self.max_length, 1),
                                   ("--batch-size", self.batch_size, 1), ("--length-penalty", self.length_penalty, 0)):
            if value is not None and value < least:
                raise CommandError(f"{flag} must be >= {least}, got {value}")
        return self

    def load_captioner(self, model_dir: str, encoder_file: Optional[str] = None):
        from captionbeam.model.captioner import Captioner
        return Captioner.load(model_dir, beam_size=self.beam_size, max_length=self.max_length,
                              batch_size=self.batch_size, alpha=self.length_penalty, which=self.weights,
                              encoder_file=encoder_file)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="trained model directory (captionbeam train --model-dir)")
    parser.add_argument("--data", required=True, help="data directory with <split>-*.tfrecord (captionbeam captions)")
    parser.add_argument("--split", default="test", help="split to decode (default: test)")
    add_decoding_arguments(parser)
    parser.add_argument("--references", metavar="FILE",
                        help="score against this caption file (the original text, as published numbers are) "
                             "instead of the records' captions (token ids turned back into words, <unk> kept)")
    parser.add_argument("--references-format", choices=("auto",) + FORMATS, default="auto",
                        help="format of --references (default: auto-detect)")
    parser.add_argument("--output", metavar="FILE", type=output_file,
                        help="predictions JSON lines (default: MODEL_DIR/eval/<split>-beam<K>.predictions.jsonl); "
                             "the metrics go beside it as .metrics.json")
    from captionbeam.pipelines.lease import FORCE_HELP
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)
    parser.add_argument("--limit", type=int, default=None, help="decode only the first N images (smoke runs)")
    add_coco_arguments(parser)
    parser.add_argument("--per-image", metavar="FILE", help="also write per-image scores as JSON lines")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def decode_split(captioner, files, feature_shape, data_vocab, batch_size, limit=None, total=None):
    """Stream the split through the captioner -> (predictions rows, references from the records, seconds)."""
    from collections import OrderedDict
    from captionbeam.model.captioner import iterate_records
    rows, refs = OrderedDict(), OrderedDict()
    duplicates = 0
    start = last_log = time.monotonic()
    for ids, feats, captions in iterate_records(files, feature_shape, batch_size):
        if limit is not None:
            room = limit - len(rows)
            if room <= 0:
                break
            ids, feats, captions = ids[:room], feats[:room], captions[:room]
        results = captioner.caption_features(feats)
        for iid, res, caps in zip(ids, results, captions):
            if iid in rows:
                duplicates += 1
                continue
            rows[iid] = {"image_id": iid, "caption": res.caption, "log_prob": round(res.log_prob, 6),
                         "finished": res.finished}
            texts = [" ".join(data_vocab.decode(c)) for c in caps]
            if any(t.strip() for t in texts):
                refs[iid] = [t for t in texts if t.strip()]
        now = time.monotonic()
        if now - last_log > 10:
            last_log = now
            rate = len(rows) / (now - start)
            eta = f", ETA {(total - len(rows)) / rate:.0f}s" if total and rate > 0 else ""
            log.info("evaluate: %d%s images decoded, %.1f images/s%s", len(rows), f"/{total}" if total else "",
                     rate, eta)
    if duplicates:
        log.warning("evaluate: %d duplicate image ids in the records were decoded once", duplicates)
    return rows, refs, time.monotonic() - start


@dataclass(frozen=True)
class EvaluateConfig:
    """What ``captionbeam evaluate`` decodes and how it scores (its flags, typed)."""
    model_dir: str
    data: str
    split: str = "test"
    decoding: Decoding = Decoding()
    references: Optional[str] = None
    references_format: str = "auto"
    output: Optional[str] = None
    limit: Optional[int] = None
    scoring: "object" = None          # model.scoring.ScoringOptions (default: its defaults)
    image_ids: Optional[str] = None
    per_image: Optional[str] = None   # also write per-image scores to this JSON-lines file
    force: bool = False               # take the predictions file's lease from a run that holds it


def config_from_args(args: argparse.Namespace) -> EvaluateConfig:
    return EvaluateConfig(decoding=Decoding.from_args(args), scoring=scoring_options(args),
                          **{k: getattr(args, k) for k in EvaluateConfig.__dataclass_fields__
                             if k not in ("decoding", "scoring")})


def predictions_path(config: EvaluateConfig) -> str:
    """Where ``evaluate`` writes its predictions: ``--output``, else under the model dir."""
    return (config.output or
            f"{config.model_dir.rstrip('/')}/eval/{config.split}-beam{config.decoding.beam_size}.predictions.jsonl")


@dataclass(frozen=True)
class EvaluatePlan:
    """The inputs read and checked before decoding: the data directory, the split's record files, the
    reference file and image ids (if given), and where the predictions go."""
    info: object                      # model.data.DataInfo
    files: Tuple[str, ...]
    references_file: object = None    # model.references.References
    image_ids: object = None
    predictions: str = ""

    def summary_lines(self) -> List[str]:
        return [f"evaluate: {len(self.files)} record file(s) -> {self.predictions}"]


def plan(config: EvaluateConfig) -> EvaluatePlan:
    """Every check before any work: the decoding flags, --limit, the data directory and its split, the
    references; :class:`CommandError` names what is wrong."""
    _check_flags(config)
    from captionbeam.model.caption_files import CaptionFileError
    from captionbeam.model.data import open_data, split_files
    from captionbeam.model.references import load_image_ids, load_references
    try:
        info = open_data(config.data)
        files = split_files(config.data, config.split)
        if not files:
            raise CommandError(f"--split: no '{config.split}' records in {config.data} "
                               f"(expected {config.split}-NNNNN-of-NNNNN.tfrecord)")
        references_file = (load_references(config.references, config.references_format)
                           if config.references else None)
        image_ids = load_image_ids(config.image_ids) if config.image_ids else None
    except (OSError, ValueError, CaptionFileError) as e:
        if isinstance(e, CommandError):
            raise
        raise CommandError(str(e)) from None
    return EvaluatePlan(info=info, files=tuple(files), references_file=references_file, image_ids=image_ids,
                        predictions=predictions_path(config))


def _check_flags(config: EvaluateConfig) -> None:
    """The flags alone (nothing read): the decoding flags and --limit."""
    config.decoding.check()
    if config.limit is not None and config.limit < 1:
        raise CommandError(f"--limit must be >= 1, got {config.limit}")


@dataclass
class EvaluateResult:
    """The scores (``model.scoring.ScoreReport``; ``extra``: ``decoding``, ``predictions``)."""
    report: object

    def to_dict(self) -> Dict[str, object]:
        return self.report.to_dict()

    def summary_lines(self) -> List[str]:
        from captionbeam.model.scoring import format_report
        d = self.report.extra["decoding"]
        return ([f"{d['arch']} model {d['model_version']} ({d['encoder']}), split {d['split']}, beam {d['beam_size']}: "
                 f"{d['images']} images in {d['seconds']:.1f}s ({d['images_per_second']} images/s, after "
                 f"{d['trace_seconds']:.1f}s tracing), {d['unfinished']} cut at max length"]
                + format_report(self.report).splitlines() + [f"predictions: {self.report.extra['predictions']}"])


def run(config: EvaluateConfig, planned: Optional[EvaluatePlan] = None) -> EvaluateResult:
    """:func:`_run` under the lease of the predictions file (beside it: ``<file>.lease/``), so that the
    predictions and metrics files always come from one run; the flags are checked before the lease is
    taken, the inputs (:func:`plan`, unless given) under it."""
    from captionbeam.pipelines.lease import output_lease
    _check_flags(config)
    with output_lease(predictions_path(config), "evaluate", config.force, flag="--output", beside=True):
        return EvaluateResult(_run(config, planned or plan(config)))


def _run(config: EvaluateConfig, p: EvaluatePlan):
    """Decode the split, write the predictions and ``<predictions>.metrics.json``, and return the
    ``model.scoring.ScoreReport`` (``extra``: ``decoding``, ``predictions``); :class:`CommandError` names
    what is wrong."""
    from captionbeam.model.coco_metrics import CocoMetricsError
    from captionbeam.model import jsonl
    from captionbeam.model.references import MissingIdsError
    from captionbeam.model.scoring import ScoringOptions, score

    info, files, references_file, image_ids = p.info, list(p.files), p.references_file, p.image_ids
    try:
        captioner = config.decoding.load_captioner(config.model_dir)
    except (OSError, ValueError) as e:
        raise CommandError(str(e)) from None
    if list(captioner.config.feature_shape) != list(info.feature_shape):
        raise CommandError(f"--data {config.data} holds features of shape {tuple(info.feature_shape)}, the "
                           f"model in {config.model_dir} reads {tuple(captioner.config.feature_shape)}")
    if info.features_spec.encoder != captioner.encoder_name:
        log.warning("evaluate: data features come from encoder %r, the model was trained on %r",
                    info.features_spec.encoder, captioner.encoder_name)
    if tuple(info.vocab.tokens) != tuple(captioner.vocab.tokens):
        log.warning("evaluate: the data vocabulary differs from the model's; references use the data's")

    total = info.stats.split_images(config.split)
    if config.limit:
        total = min(total or config.limit, config.limit)
    log.info("evaluate: decoding split %r of %s (%d shard(s)) with %s, beam %d, max length %d",
             config.split, config.data, len(files), config.model_dir, captioner.beam_size, captioner.max_length)
    trace_seconds = captioner.warm_up()
    rows, record_refs, seconds = decode_split(captioner, files, info.feature_shape, info.vocab,
                                              config.decoding.batch_size, config.limit, total)
    if not rows:
        raise CommandError(f"--split {config.split}: no images in {len(files)} record file(s)")
    output = p.predictions
    # metrics present means they are of these predictions: an earlier run's go first (a kill between the
    # two commits leaves new predictions without metrics, never beside the old run's)
    pio.delete([metrics_path(output)])
    pio.write_text_atomic(output, jsonl.dumps(rows.values()))
    from captionbeam.pipelines.crash_points import crash_point
    crash_point("evaluate:predictions-written")

    predictions = {i: r["caption"] for i, r in rows.items()}
    refs = references_file.captions if references_file is not None else record_refs
    try:
        report = score(predictions, refs, config.scoring or ScoringOptions(),
                       image_ids if image_ids is not None else (list(predictions) if references_file else None))
    except (MissingIdsError, CocoMetricsError, ValueError) as e:
        raise CommandError(f"{e} (predictions written to {output})") from None
    report.extra["decoding"] = {
        "model_dir": config.model_dir, "model_version": captioner.model_version, "encoder": captioner.encoder_name,
        "arch": captioner.arch, "members": captioner.members, "split": config.split, "beam_size": captioner.beam_size,
        "length_penalty": captioner.alpha, "max_length": captioner.max_length, "images": len(rows),
        "unfinished": sum(1 for r in rows.values() if not r["finished"]), "seconds": round(seconds, 3),
        "trace_seconds": round(trace_seconds, 3),
        "images_per_second": round(len(rows) / max(seconds, 1e-9), 2),
        "references": config.references or "records",
    }
    report.extra["predictions"] = output
    if config.per_image:
        pio.write_text_atomic(config.per_image, report.per_image_jsonl())
    pio.write_text_atomic(metrics_path(output), json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def metrics_path(predictions: str) -> str:
    """Where ``evaluate`` writes the metrics of a predictions file."""
    return predictions.rsplit(".jsonl", 1)[0] + ".metrics.json"


def main(args, runner=None) -> int:
    result = run(config_from_args(args))
    print(json.dumps(result.to_dict()) if args.json else "\n".join(result.summary_lines()))
    return OK
