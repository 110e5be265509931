"""Corpus BLEU-1..4 with NLTK (``nltk.translate.bleu_score.corpus_bleu``, one call with a list of
weight tuples), plus the corpus statistics behind the scores (``BleuStatistics``, counted with NLTK's
own ``modified_precision`` / ``closest_ref_length`` / ``brevity_penalty``), so a score can be explained.

What this module adds to NLTK: an empty corpus scores 0 (NLTK divides by zero), a hypothesis without
references is a clear ``ValueError``, NLTK's warnings about orders without matches are silenced (an
order with no match, unsmoothed, contributes ``log(sys.float_info.min)`` times its weight: a score of
~1e-77, not exactly 0; no unigram match at all gives 0).

Variants: ``nltk`` (BLEU-n with uniform weights 1/n, the paper's definition) and ``tutorial`` (the
classic merge-model tutorial's weights: (1,0,0,0), (.5,.5,0,0), (.3,.3,.3,0), (.25,.25,.25,.25);
only its BLEU-3 differs from ``nltk``).

Tokenisation (``BLEU_TOKENIZERS``): ``lower`` (default: lowercase + whitespace split, like the
tutorial's cleaned text), ``seed``/``basic`` (``model.text`` cleaning rules), ``none`` (split only).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

from captionbeam.model.text import clean_basic, clean_none, clean_seed

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
def _check_references(list_of_references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens]) -> None:
    if len(list_of_references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(list_of_references)} reference lists")
    for k, references in enumerate(list_of_references):
        if len(references) == 0:
            raise ValueError(f"hypothesis #{k} has no reference captions")


@dataclass(frozen=True)
class BleuStatistics:
    """Corpus totals: matches and counts per n-gram order (index 0 = unigrams), lengths."""
    numerators: Tuple[int, ...]
    denominators: Tuple[int, ...]
    hyp_length: int
    ref_length: int

    @property
    def brevity_penalty(self) -> float:
        from nltk.translate.bleu_score import brevity_penalty
        return float(brevity_penalty(self.ref_length, self.hyp_length))

    def precisions(self) -> List[float]:
        return [n / d for n, d in zip(self.numerators, self.denominators)]


def corpus_statistics(list_of_references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens],
                      max_order: int = MAX_ORDER) -> BleuStatistics:
    """The totals NLTK's corpus BLEU is made of, counted with NLTK's own functions. Each hypothesis needs
    at least one reference (which may be empty)."""
    from nltk.translate.bleu_score import closest_ref_length, modified_precision
    _check_references(list_of_references, hypotheses)
    num = [0] * max_order
    den = [0] * max_order
    hyp_total = ref_total = 0
    for references, hypothesis in zip(list_of_references, hypotheses):
        for n in range(1, max_order + 1):
            p = modified_precision(references, hypothesis, n)  # an unnormalised Fraction: the raw counts
            num[n - 1] += p.numerator
            den[n - 1] += p.denominator
        hyp_total += len(hypothesis)
        ref_total += closest_ref_length(references, len(hypothesis))
    return BleuStatistics(tuple(num), tuple(den), hyp_total, ref_total)


def corpus_bleus(list_of_references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens],
                 weights: Sequence[Sequence[float]]) -> List[float]:
    """NLTK's ``corpus_bleu`` (no smoothing) for several weight tuples in one pass; 0 for an empty corpus."""
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu
    _check_references(list_of_references, hypotheses)
    if not hypotheses:
        return [0.0] * len(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns for every order without a match
        scores = nltk_corpus_bleu(list_of_references, hypotheses, weights=[tuple(w) for w in weights])
    return [float(s) for s in (scores if len(weights) > 1 else [scores])]  # NLTK unwraps a single tuple


def corpus_bleu(list_of_references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens],
                weights: Sequence[float] = UNIFORM_WEIGHTS[4]) -> float:
    """``nltk.translate.bleu_score.corpus_bleu`` without smoothing (one weight tuple), with this module's guards."""
    return corpus_bleus(list_of_references, hypotheses, [weights])[0]


def bleu_scores(list_of_references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens],
                variant: str = "nltk") -> Dict[str, float]:
    """``{"bleu1": .., "bleu4": ..}`` from one NLTK call."""
    weights = get_variant(variant)
    scores = corpus_bleus(list_of_references, hypotheses, [weights[n] for n in range(1, MAX_ORDER + 1)])
    return {f"bleu{n}": s for n, s in zip(range(1, MAX_ORDER + 1), scores)}


def bleu_for_texts(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str],
                   variant: str = "nltk", tokenizer: str = "lower") -> Tuple[Dict[str, float], BleuStatistics]:
    """BLEU-1..4 for aligned ``image_id -> reference texts`` and ``image_id -> predicted text``."""
    tok = get_tokenizer(tokenizer)
    ids = list(predictions)
    refs = [[tok(r) for r in references[i]] for i in ids]
    hyps = [tok(predictions[i]) for i in ids]
    return bleu_scores(refs, hyps, variant), corpus_statistics(refs, hyps, MAX_ORDER)


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
        from captionbeam.model.coco_metrics import coco_scores
        result = coco_scores(references, predictions, metrics=coco_metrics)
        report["coco"] = result.scores
        if per_image:
            report["per_image"] = result.per_image
    return report
