"""Scoring predicted captions against references: align (``model.references``), BLEU-1..4 and COCO
metrics (``model.metrics``), as one typed :class:`ScoreReport`. Shared by ``captionbeam score`` and
``captionbeam evaluate`` (which add their own context to :attr:`ScoreReport.extra`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple

from captionbeam.model import jsonl
from captionbeam.model.coco_metrics import METRICS as COCO_METRICS
from captionbeam.model.references import Alignment, align


@dataclass(frozen=True)
class ScoringOptions:
    """How to score: BLEU weights and tokens, which pycocoevalcap scorers (``()``: none, no Java needed),
    whether ids on one side only are allowed, and whether per-image COCO scores are kept."""
    bleu_variant: str = "nltk"
    bleu_tokenizer: str = "lower"
    coco_metrics: Tuple[str, ...] = COCO_METRICS
    allow_missing: bool = False
    per_image: bool = False


@dataclass
class ScoreReport:
    """``metrics``: ``bleu1``..``bleu4``, ``bleu`` (the statistics) and ``coco`` as
    :func:`model.metrics.score_captions` gives them; ``counts``: what was scored and skipped;
    ``alignment``: the texts scored; ``per_image``: COCO scores per image (with ``per_image``);
    ``extra``: what a command adds to its JSON output (decoding, predictions file)."""
    metrics: Dict[str, object]
    counts: Dict[str, int]
    alignment: Alignment
    per_image: Dict[str, Dict[str, float]] = field(default_factory=dict)
    extra: Dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, object]:
        """The JSON output (no per-image scores, no texts)."""
        return {**self.metrics, "counts": self.counts, **self.extra}

    def per_image_rows(self) -> Iterator[Dict[str, object]]:
        a = self.alignment
        for i in a.ids:
            yield {"image_id": i, "prediction": a.predictions[i], "references": a.references[i],
                   **self.per_image.get(i, {})}

    def per_image_jsonl(self) -> str:
        return jsonl.dumps(self.per_image_rows())


def score(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
          options: ScoringOptions = ScoringOptions(), image_ids: Optional[Sequence[str]] = None) -> ScoreReport:
    """Align predictions with references (``image_ids``: restrict both to a split first) and score them.
    Raises ``MissingIdsError`` (ids on one side only, unless ``allow_missing``) and ``CocoMetricsError``."""
    from captionbeam.model import metrics
    alignment = align(predictions, references, allow_missing=options.allow_missing, image_ids=image_ids)
    report = metrics.score_captions(alignment.references, alignment.predictions, variant=options.bleu_variant,
                                    tokenizer=options.bleu_tokenizer, coco_metrics=options.coco_metrics or None,
                                    per_image=options.per_image)
    per_image = report.pop("per_image", {})
    return ScoreReport(metrics=report, counts=alignment.summary(), alignment=alignment, per_image=per_image)


def format_report(report: ScoreReport) -> str:
    """The human-readable table of a report."""
    lines = []
    counts = report.counts
    if counts:
        lines.append(f"images scored: {counts['images']}  reference captions: {counts['reference_captions']}  "
                     f"empty predictions: {counts['empty_predictions']}")
        skipped = [f"{k.replace('_', ' ')}: {counts[k]}" for k in
                   ("missing_references", "missing_predictions", "outside_image_ids") if counts.get(k)]
        if skipped:
            lines.append("not scored: " + ", ".join(skipped))
    m = report.metrics
    b = m["bleu"]
    lines.append(f"BLEU ({b['variant']} weights, '{b['tokenizer']}' tokens; brevity penalty "
                 f"{b['brevity_penalty']:.4f}, hypothesis/reference length {b['hyp_length']}/{b['ref_length']})")
    lines.append("  " + "  ".join(f"BLEU-{n} {m[f'bleu{n}']:.4f}" for n in range(1, 5)))
    if "coco" in m:
        lines.append("COCO (pycocoevalcap, PTB tokens)")
        from captionbeam.model.coco_metrics import COCO_LABELS
        lines.append("  " + "  ".join(f"{COCO_LABELS.get(k, k)} {v:.4f}" for k, v in m["coco"].items()))
    return "\n".join(lines)
