"""The vocabulary as a Beam step: count tokens of one split with ``CombinePerKey`` and order them
deterministically (``model.vocab.Vocabulary.from_counts``: frequency descending, then alphabetical,
the four reserved tokens first). The result is a one-element PCollection, meant to be used as a side
input (``beam.pvalue.AsSingleton``).

The order of the input, the number of workers and the bundling cannot change the result: counting
is commutative and the final order is a sort on (count, token).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import apache_beam as beam

from captionbeam.model.vocab import RESERVED, Vocabulary


def vocabulary_from_counts(counts: Iterable[Tuple[str, int]], min_count: int) -> Vocabulary:
    merged: Dict[str, int] = {}
    for token, n in counts:
        merged[token] = merged.get(token, 0) + int(n)
    return Vocabulary.from_counts(merged, min_count)


class CountTokens(beam.PTransform):
    """PCollection[str] (one element per token occurrence) -> one element: [(token, count), ...]
    sorted by count descending then token (reserved tokens dropped)."""

    def expand(self, tokens):
        return (tokens
                | "Drop reserved" >> beam.Filter(lambda t: t not in RESERVED)
                | "Pair" >> beam.Map(lambda t: (t, 1))
                | "Count per token" >> beam.CombinePerKey(sum)
                | "Gather" >> beam.combiners.ToList()
                | "Sort" >> beam.Map(lambda counts: sorted(counts, key=lambda tc: (-tc[1], tc[0]))))


class BuildVocabulary(beam.PTransform):
    """PCollection[str] (one element per token occurrence) -> PCollection[Vocabulary] (one element).

    ``min_count``: tokens seen fewer times are left out (they become ``<unk>``). Applied to the
    output of :class:`CountTokens` (a one-element PCollection of counts) it skips the counting."""

    def __init__(self, min_count: int = 5, counted: bool = False):
        super().__init__()
        if min_count < 1:
            raise ValueError(f"--min-count must be at least 1, got {min_count}")
        self.min_count = min_count
        self.counted = counted

    def expand(self, pcoll):
        counts = pcoll if self.counted else pcoll | "Count tokens" >> CountTokens()
        return counts | "Order" >> beam.Map(vocabulary_from_counts, self.min_count)


def token_counts_text(counts: List[Tuple[str, int]]) -> str:
    """``token<TAB>count`` lines, most frequent first (for ``token_counts.tsv``)."""
    ordered = sorted(counts, key=lambda tc: (-tc[1], tc[0]))
    return "".join(f"{t}\t{n}\n" for t, n in ordered)
