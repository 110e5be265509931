"""Corpus BLEU, computed exactly as NLTK's ``nltk.translate.bleu_score.corpus_bleu``: pure Python.

Why our own: one pass of n-gram statistics gives BLEU-1..4 at once (NLTK recounts per call), and the
statistics are explicit (``BleuStatistics``), so the score can be explained. Equality with NLTK
(to 1e-9, in practice to the last bit) is a test, on random corpora and on NLTK's edge cases.

NLTK's behaviour, reproduced on purpose:
- modified precision per order ``n`` is clipped counts over ``max(1, hypothesis n-grams)``: a
  hypothesis shorter than ``n`` adds 1 to that order's denominator;
- the reference length is the closest to the hypothesis length, ties to the shorter;
- brevity penalty ``exp(1 - r/c)`` when ``c <= r`` (1 when ``c > r``, 0 when ``c == 0``);
- no unigram match at all -> 0; an order with no match (no smoothing) contributes
  ``log(sys.float_info.min)`` times its weight, i.e. a score of ~1e-77, not exactly 0;
- geometric mean with ``math.fsum`` of ``w * log(p)`` over the orders.

Variants: ``nltk`` (BLEU-n with uniform weights 1/n, the paper's definition) and ``tutorial`` (the
classic merge-model tutorial's weights: (1,0,0,0), (.5,.5,0,0), (.3,.3,.3,0), (.25,.25,.25,.25);
only its BLEU-3 differs from ``nltk``).

Tokenisation (``BLEU_TOKENIZERS``): ``lower`` (default: lowercase + whitespace split, like the
tutorial's cleaned text), ``seed``/``basic`` (``model.text`` cleaning rules), ``none`` (split only).
"""
from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

from model.text import clean_basic, clean_none, clean_seed

MAX_ORDER = 4
Tokens = Sequence[str]

UNIFORM_WEIGHTS: Dict[int, Tuple[float, ...]] = {n: tuple(1.0 / n for _ in range(n)) for n in range(1, MAX_ORDER + 1)}
TUTORIAL_WEIGHTS: Dict[int, Tuple[float, ...]] = {
    1: (1.0, 0, 0, 0),
    2: (0.5, 0.5, 0, 0),
    3: (0.3, 0.3, 0.3, 0),
    4: (0.25, 0.25, 0.25, 0.25),
}
VARIANTS: Dict[str, Dict[int, Tuple[float, ...]]] = {"nltk": UNIFORM_WEIGHTS, "tutorial": TUTORIAL_WEIGHTS}


def tokenize_lower(text: str) -> List[str]:
    """Default BLEU tokenisation: lowercase, then split on whitespace."""
    return text.lower().split()


BLEU_TOKENIZERS: Dict[str, Callable[[str], List[str]]] = {
    "lower": tokenize_lower,
    "seed": clean_seed,
    "basic": clean_basic,
    "none": clean_none,
}


def get_tokenizer(name: str) -> Callable[[str], List[str]]:
    try:
        return BLEU_TOKENIZERS[name]
    except KeyError:
        raise ValueError(f"--bleu-tokenizer: unknown tokenizer {name!r}; choose one of {sorted(BLEU_TOKENIZERS)}") from None


def get_variant(name: str) -> Dict[int, Tuple[float, ...]]:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"--bleu-variant: unknown variant {name!r}; choose one of {sorted(VARIANTS)}") from None


# ----------------------------------------------------------------------------- statistics
def ngram_counts(tokens: Tokens, n: int) -> Counter:
    if len(tokens) < n:
        return Counter()
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def modified_precision(references: Sequence[Tokens], hypothesis: Tokens, n: int) -> Tuple[int, int]:
    """(clipped matches, max(1, hypothesis n-grams)) for one hypothesis, as NLTK counts them."""
    counts = ngram_counts(hypothesis, n)
    max_counts: Dict[tuple, int] = {}
    for reference in references:
        ref_counts = ngram_counts(reference, n)
        for ngram in counts:
            max_counts[ngram] = max(max_counts.get(ngram, 0), ref_counts[ngram])
    numerator = sum(min(c, max_counts[g]) for g, c in counts.items())
    return numerator, max(1, sum(counts.values()))


def closest_ref_length(references: Sequence[Tokens], hyp_len: int) -> int:
    return min((len(r) for r in references), key=lambda r: (abs(r - hyp_len), r))


def brevity_penalty(closest_ref_len: int, hyp_len: int) -> float:
    if hyp_len > closest_ref_len:
        return 1
    if hyp_len == 0:
        return 0
    return math.exp(1 - closest_ref_len / hyp_len)


@dataclass(frozen=True)
class BleuStatistics:
    """Corpus totals: matches and counts per n-gram order (index 0 = unigrams), lengths."""
    numerators: Tuple[int, ...]
    denominators: Tuple[int, ...]
    hyp_length: int
    ref_length: int

    @property
    def brevity_penalty(self) -> float:
        return float(brevity_penalty(self.ref_length, self.hyp_length))

    def precisions(self) -> List[float]:
        return [n / d for n, d in zip(self.numerators, self.denominators)]

    def bleu(self, weights: Sequence[float]) -> float:
        """BLEU with the given weights (one per order, starting at unigrams), NLTK's arithmetic."""
        if len(weights) > len(self.numerators):
            raise ValueError(f"weights for {len(weights)} orders, statistics only up to {len(self.numerators)}")
        bp = brevity_penalty(self.ref_length, self.hyp_length)
        if self.numerators[0] == 0:
            return 0.0
        p_n = [
            (self.numerators[i] / self.denominators[i]) if self.numerators[i] != 0 else sys.float_info.min
            for i in range(len(weights))
        ]
        s = math.fsum(w * math.log(p) for w, p in zip(weights, p_n) if p > 0)
        return float(bp * math.exp(s))


def corpus_statistics(list_of_references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens],
                      max_order: int = MAX_ORDER) -> BleuStatistics:
    """One pass over the corpus. Each hypothesis needs at least one reference (which may be empty)."""
    if len(list_of_references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(list_of_references)} reference lists")
    num = [0] * max_order
    den = [0] * max_order
    hyp_total = ref_total = 0
    for k, (references, hypothesis) in enumerate(zip(list_of_references, hypotheses)):
        if len(references) == 0:
            raise ValueError(f"hypothesis #{k} has no reference captions")
        for n in range(1, max_order + 1):
            a, b = modified_precision(references, hypothesis, n)
            num[n - 1] += a
            den[n - 1] += b
        hyp_total += len(hypothesis)
        ref_total += closest_ref_length(references, len(hypothesis))
    return BleuStatistics(tuple(num), tuple(den), hyp_total, ref_total)


def corpus_bleu(list_of_references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens],
                weights: Sequence[float] = UNIFORM_WEIGHTS[4]) -> float:
    """Drop-in for ``nltk.translate.bleu_score.corpus_bleu`` without smoothing (one weight tuple)."""
    return corpus_statistics(list_of_references, hypotheses, max_order=len(weights)).bleu(weights)


def bleu_scores(list_of_references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens],
                variant: str = "nltk") -> Dict[str, float]:
    """``{"bleu1": .., "bleu4": ..}`` from one pass of statistics."""
    weights = get_variant(variant)
    stats = corpus_statistics(list_of_references, hypotheses, MAX_ORDER)
    return {f"bleu{n}": stats.bleu(weights[n]) for n in range(1, MAX_ORDER + 1)}


def bleu_for_texts(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str],
                   variant: str = "nltk", tokenizer: str = "lower") -> Tuple[Dict[str, float], BleuStatistics]:
    """BLEU-1..4 for aligned ``image_id -> reference texts`` and ``image_id -> predicted text``."""
    tok = get_tokenizer(tokenizer)
    ids = list(predictions)
    refs = [[tok(r) for r in references[i]] for i in ids]
    hyps = [tok(predictions[i]) for i in ids]
    stats = corpus_statistics(refs, hyps, MAX_ORDER)
    weights = get_variant(variant)
    return {f"bleu{n}": stats.bleu(weights[n]) for n in range(1, MAX_ORDER + 1)}, stats


# ----------------------------------------------------------------------------- full report
def score_captions(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str],
                   variant: str = "nltk", tokenizer: str = "lower",
                   coco_metrics: Sequence[str] | None = ("bleu", "meteor", "rouge", "cider"),
                   per_image: bool = False) -> Dict[str, object]:
    """Every metric for aligned texts, as one JSON-ready dict.

    ``bleu1``..``bleu4`` (NLTK-compatible, ``variant`` weights, ``tokenizer`` tokens), ``bleu`` (the
    statistics behind them) and ``coco`` (pycocoevalcap's keys; omitted when ``coco_metrics`` is
    empty or None). With ``per_image``, ``per_image`` maps id -> pycocoevalcap's per-image scores.
    """
    scores, stats = bleu_for_texts(references, predictions, variant=variant, tokenizer=tokenizer)
    report: Dict[str, object] = dict(scores)
    report["bleu"] = {
        "variant": variant,
        "tokenizer": tokenizer,
        "weights": {f"bleu{n}": list(get_variant(variant)[n]) for n in range(1, MAX_ORDER + 1)},
        "precisions": stats.precisions(),
        "brevity_penalty": stats.brevity_penalty,
        "hyp_length": stats.hyp_length,
        "ref_length": stats.ref_length,
    }
    if coco_metrics:
        from model.coco_metrics import coco_scores
        result = coco_scores(references, predictions, metrics=coco_metrics)
        report["coco"] = result.scores
        if per_image:
            report["per_image"] = result.per_image
    return report
