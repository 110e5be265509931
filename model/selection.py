"""Model selection by dev CIDEr-D (``captionbeam train --select-by cider``, the default of ``--objective
scst``): greedy-decode a split of the training records and score it with ``model.cider``.

The score is pycocoevalcap's CIDEr-D on the records' tokens: hypotheses and references as vocabulary
ids without ``<start>`` / ``<end>`` (``<unk>`` kept), document frequencies from the split's own
references, as pycocoevalcap computes them from the scored corpus. ``captionbeam evaluate`` scores the
original caption text after the PTB tokenizer instead, so its CIDEr-D on the same split differs a
little (rare words are ``<unk>`` here); it ranks models the same way.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from captionbeam.model.cider import CiderD, strip_special
from captionbeam.model.vocab import END_ID


def split_references(files: Sequence[str], feature_shape: Sequence[int], batch_size: int = 256,
                     max_images: Optional[int] = None, keep_end: bool = False):
    """Stream a split -> (list of feature batches, reference sets: per image its captions' ids without
    ``<start>`` (and without ``<end>`` unless ``keep_end``))."""
    from captionbeam.model.captioner import iterate_records
    batches, refs = [], []
    for _, feats, caps in iterate_records(list(files), feature_shape, batch_size):
        if max_images is not None and len(refs) + len(feats) > max_images:
            room = max_images - len(refs)
            feats, caps = feats[:room], caps[:room]
        if len(feats) == 0:
            break
        batches.append(feats)
        refs += [[strip_special(c[1:], END_ID, keep_end=keep_end) for c in image] for image in caps]
        if max_images is not None and len(refs) >= max_images:
            break
    return batches, refs


class SplitCider:
    """Dev CIDEr-D of a model, reusable across epochs: the split is read once, the decoder traced once."""

    def __init__(self, model, files: Sequence[str], feature_shape: Sequence[int], batch_size: int = 64,
                 max_images: Optional[int] = None):
        from captionbeam.model.decode import Decoder
        self.batches, self.references = split_references(files, feature_shape, batch_size, max_images)
        if not self.references:
            raise ValueError("--select-by cider: the validation split has no images")
        self.scorer = CiderD(self.references, vocab_size=model.config.vocab_size)
        self.decoder = Decoder(model)

    @property
    def images(self) -> int:
        return len(self.references)

    def hypotheses(self) -> List[List[int]]:
        out: List[List[int]] = []
        for feats in self.batches:
            result = self.decoder(feats)
            out += [strip_special(row, END_ID, keep_end=False) for row in result.tokens]
        return out

    def __call__(self) -> Tuple[float, List[List[int]]]:
        """-> (corpus CIDEr-D of greedy captions, the captions' ids)."""
        hyps = self.hypotheses()
        return self.scorer.score(hyps, self.references), hyps
