"""``captionbeam score``: BLEU-1..4 (NLTK-exact) and COCO metrics for a predictions file against references."""
from __future__ import annotations

import argparse
import json
import sys

from model.caption_files import FORMATS

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


def format_report(report: dict) -> str:
    """The human-readable table printed without --json."""
    lines = []
    counts = report.get("counts", {})
    if counts:
        lines.append(f"images scored: {counts['images']}  reference captions: {counts['reference_captions']}  "
                     f"empty predictions: {counts['empty_predictions']}")
        skipped = [f"{k.replace('_', ' ')}: {counts[k]}" for k in
                   ("missing_references", "missing_predictions", "outside_image_ids") if counts.get(k)]
        if skipped:
            lines.append("not scored: " + ", ".join(skipped))
    b = report["bleu"]
    lines.append(f"BLEU ({b['variant']} weights, '{b['tokenizer']}' tokens; brevity penalty "
                 f"{b['brevity_penalty']:.4f}, hypothesis/reference length {b['hyp_length']}/{b['ref_length']})")
    lines.append("  " + "  ".join(f"BLEU-{n} {report[f'bleu{n}']:.4f}" for n in range(1, 5)))
    if "coco" in report:
        lines.append("COCO (pycocoevalcap, PTB tokens)")
        lines.append("  " + "  ".join(f"{k} {v:.4f}" for k, v in report["coco"].items()))
    return "\n".join(lines)


def compute(args, predictions, references_captions, image_ids=None) -> dict:
    """Align, score, and return the report (shared with ``evaluate``)."""
    from model import metrics
    from model.references import align
    alignment = align(predictions, references_captions, allow_missing=args.allow_missing, image_ids=image_ids)
    report = metrics.score_captions(alignment.references, alignment.predictions, variant=args.bleu_variant,
                                    tokenizer=args.bleu_tokenizer,
                                    coco_metrics=None if args.no_coco else args.coco_metrics,
                                    per_image=bool(getattr(args, "per_image", None)))
    report["counts"] = alignment.summary()
    report["_alignment"] = alignment
    return report


def write_per_image(path: str, report: dict) -> None:
    from model.references import protect_json_lines
    alignment = report["_alignment"]
    per = report.get("per_image", {})
    with open(path, "w", encoding="utf-8") as f:
        for i in alignment.ids:
            row = {"image_id": i, "prediction": alignment.predictions[i], "references": alignment.references[i]}
            row.update(per.get(i, {}))
            f.write(protect_json_lines(json.dumps(row, ensure_ascii=False)) + "\n")


def public(report: dict) -> dict:
    return {k: v for k, v in report.items() if not k.startswith("_") and k != "per_image"}


def main(args, pipeline_args) -> int:
    from model.caption_files import CaptionFileError
    from model.coco_metrics import CocoMetricsError
    from model.references import MissingIdsError, load_image_ids, load_predictions, load_references
    try:
        predictions = load_predictions(args.predictions)
        refs = load_references(args.references, args.references_format)
        image_ids = load_image_ids(args.image_ids) if args.image_ids else None
        report = compute(args, predictions, refs.captions, image_ids)
    except (OSError, CaptionFileError, MissingIdsError, CocoMetricsError, ValueError) as e:
        print(f"captionbeam score: error: {e}", file=sys.stderr)
        return 2
    report["counts"]["dropped_empty_references"] = refs.dropped_empty
    if args.per_image:
        write_per_image(args.per_image, report)
    if args.json:
        print(json.dumps(public(report)))
    else:
        print(format_report(report))
    return 0
