"""``captionbeam score``: BLEU-1..4 (NLTK-exact) and COCO metrics for a predictions file against references."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Dict, List, Optional

from captionbeam.launch.command_args import CommandError
from captionbeam.launch.exit_codes import OK
from captionbeam.model.caption_files import FORMATS

HELP = "score predicted captions against references (BLEU-1..4, COCO metrics)"
COCO_CHOICES = ("bleu", "meteor", "rouge", "cider")


def add_coco_arguments(parser: argparse.ArgumentParser) -> None:
    """Metric flags shared with ``captionbeam evaluate``."""
    g = parser.add_argument_group("metrics")
    g.add_argument("--bleu-variant", choices=("nltk", "tutorial"), default="nltk",
                   help="BLEU weights: 'nltk' = uniform 1/n for BLEU-n (default); 'tutorial' = the classic "
                        "merge-model tutorial's weights, whose BLEU-3 is (0.3, 0.3, 0.3, 0)")
    g.add_argument("--bleu-tokenizer", choices=("lower", "seed", "basic", "none"), default="lower",
                   help="tokens for the NLTK BLEU: 'lower' = lowercase + whitespace split (default, like the "
                        "tutorial's cleaned text); 'seed'/'basic' = the caption cleaning rules of `captions "
                        "--clean`; 'none' = whitespace split, case kept. COCO metrics always use the PTB tokenizer")
    g.add_argument("--coco-metrics", default=",".join(COCO_CHOICES), type=_coco_list, metavar="LIST",
                   help="comma-separated pycocoevalcap scorers to run (default: bleu,meteor,rouge,cider; METEOR "
                        "starts a JVM and takes ~15 s)")
    g.add_argument("--no-coco", action="store_true",
                   help="skip pycocoevalcap entirely (no Java needed): NLTK BLEU only")
    g.add_argument("--allow-missing", action="store_true",
                   help="score the images present on both sides when some predicted images have no references "
                        "or some referenced images have no prediction (default: error naming them)")
    g.add_argument("--image-ids", metavar="FILE",
                   help="split file (one image file name or id per line, e.g. Flickr_8k.testImages.txt): "
                        "restrict references and predictions to these images before matching them")


def _coco_list(value: str):
    items = [v.strip().lower() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in COCO_CHOICES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown scorer(s) {bad}; choose from {', '.join(COCO_CHOICES)}")
    return tuple(items)


_coco_list.render = ",".join


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", required=True, metavar="FILE",
                        help='predictions, JSON lines {"image_id": ..., "caption": ...} (one per image)')
    parser.add_argument("--references", required=True, metavar="FILE",
                        help="reference captions: Flickr8k token file, Kaggle captions.txt, COCO captions JSON, "
                             'or JSON lines {"image_id": ..., "captions": [...]}')
    parser.add_argument("--references-format", choices=("auto",) + FORMATS, default="auto",
                        help="format of --references (default: auto-detect from the name and first bytes)")
    add_coco_arguments(parser)
    parser.add_argument("--per-image", metavar="FILE",
                        help="also write JSON lines per image: image_id, prediction, references, COCO scores")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def scoring_options(args):
    """``model.scoring.ScoringOptions`` from the metric flags (shared with ``evaluate``)."""
    from captionbeam.model.scoring import ScoringOptions
    return ScoringOptions(bleu_variant=args.bleu_variant, bleu_tokenizer=args.bleu_tokenizer,
                          coco_metrics=() if args.no_coco else tuple(args.coco_metrics),
                          allow_missing=args.allow_missing, per_image=bool(getattr(args, "per_image", None)))


@dataclass(frozen=True)
class ScoreConfig:
    predictions: str
    references: str
    references_format: str = "auto"
    options: object = None            # model.scoring.ScoringOptions (None: the defaults)
    image_ids: Optional[str] = None
    per_image: Optional[str] = None


def config_from_args(args: argparse.Namespace) -> ScoreConfig:
    return ScoreConfig(predictions=args.predictions, references=args.references,
                       references_format=args.references_format, options=scoring_options(args),
                       image_ids=args.image_ids, per_image=args.per_image)


@dataclass(frozen=True)
class ScorePlan:
    """Every input read and checked: the predictions, the references and the image-id restriction."""
    predictions: Dict[str, str]
    references: object               # model.references.References
    image_ids: Optional[object]

    def summary_lines(self) -> List[str]:
        return [f"score: {len(self.predictions)} predictions against {len(self.references.captions)} images' "
                f"references" + (f", restricted to {len(self.image_ids)} image ids" if self.image_ids is not None
                                 else "")]


def plan(config: ScoreConfig) -> ScorePlan:
    from captionbeam.model.caption_files import CaptionFileError
    from captionbeam.model.references import load_image_ids, load_predictions, load_references
    try:
        return ScorePlan(predictions=load_predictions(config.predictions),
                         references=load_references(config.references, config.references_format),
                         image_ids=load_image_ids(config.image_ids) if config.image_ids else None)
    except (OSError, CaptionFileError, ValueError) as e:
        raise CommandError(str(e)) from None


@dataclass
class ScoreResult:
    report: object                   # model.scoring.ScoreReport

    def to_dict(self) -> Dict[str, object]:
        return self.report.to_dict()

    def summary_lines(self) -> List[str]:
        from captionbeam.model.scoring import format_report
        return format_report(self.report).splitlines()


def run(config: ScoreConfig, planned: Optional[ScorePlan] = None) -> ScoreResult:
    """Score; ``CommandError`` naming the file or flag on bad input. Writes ``config.per_image``."""
    from captionbeam.model.coco_metrics import CocoMetricsError
    from captionbeam.model.references import MissingIdsError
    from captionbeam.model.scoring import ScoringOptions, score
    p = planned or plan(config)
    try:
        report = score(p.predictions, p.references.captions, config.options or ScoringOptions(), p.image_ids)
    except (MissingIdsError, CocoMetricsError, ValueError) as e:
        raise CommandError(str(e)) from None
    report.counts["dropped_empty_references"] = p.references.dropped_empty
    if config.per_image:
        with open(config.per_image, "w", encoding="utf-8") as f:
            f.write(report.per_image_jsonl())
    return ScoreResult(report)


def main(args, runner=None) -> int:
    result = run(config_from_args(args))
    print(json.dumps(result.to_dict()) if args.json else "\n".join(result.summary_lines()))
    return OK
