"""CIDEr-D on token ids, vectorised with NumPy: the reward of self-critical training and the dev
metric of ``--select-by cider``.

It computes exactly what pycocoevalcap's ``Cider`` (``cider_scorer.CiderScorer``: the COCO server's
CIDEr-D, reported as ``CIDEr`` by ``model.coco_metrics``) computes on the same tokens (a test checks
per caption to 1e-6 on random corpora):

- n-grams of orders 1..4; term frequency x IDF ``log(N) - log(max(1, df))`` where ``df`` counts the
  images of the reference corpus whose reference set contains the n-gram and ``N`` is the corpus'
  number of images; n-grams outside the corpus get the full ``log(N)``;
- per order, the "clipped" cosine ``sum min(v_hyp, v_ref) * v_ref / (|v_hyp| |v_ref|)`` times the
  Gaussian length penalty ``exp(-(l_hyp - l_ref)^2 / (2 * 6^2))``, where pycocoevalcap's length is the
  number of *bigrams* (``max(words - 1, 0)``, a quirk of its code kept here);
- the mean over orders, averaged over the image's references, times 10.

``CiderD(reference_sets)`` fixes the document frequencies from a reference corpus (for SCST: every
training image's captions; for dev selection: the dev captions, as pycocoevalcap computes them from the
scored corpus). ``scores(hypotheses, references)`` then scores a batch: one hypothesis per row against
its own reference set, all n-gram bookkeeping done with ``np.unique`` / ``searchsorted`` over the
whole batch (no per-caption Python loop over n-grams, no Java).

Tokens are integer ids (or anything ``np.asarray`` makes integers of); a caption is a 1-D sequence,
``<end>`` counted when the caller leaves it in.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import numpy as np

MAX_ORDER = 4
SIGMA = 6.0

Caption = Sequence[int]


def _as_arrays(captions: Iterable[Caption]) -> List[np.ndarray]:
    return [np.asarray(c, np.int64).ravel() for c in captions]


class _Packer:
    """Packs an n-gram of ids (< base) into one int64: order in the top digit, ids below it."""

    def __init__(self, base: int):
        self.base = int(base)
        if (MAX_ORDER + 1) * float(self.base) ** MAX_ORDER >= 2.0 ** 63:
            raise ValueError(f"token ids up to {self.base - 1}: too large to pack 4-grams into 64 bits")

    def ngrams(self, rows: List[np.ndarray]):
        """-> (row index, packed n-gram code, order 0..3) of every n-gram occurrence in ``rows``."""
        if not rows:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        lengths = np.array([len(r) for r in rows], np.int64)
        width = max(int(lengths.max()), 1)
        mat = np.zeros([len(rows), width], np.int64)
        for i, r in enumerate(rows):
            mat[i, :len(r)] = r
        out_rows, out_codes, out_orders = [], [], []
        code = np.zeros_like(mat)
        for n in range(1, MAX_ORDER + 1):
            if n > width:
                break
            # code of the n-gram starting at j: ids j..j+n-1 in base ``base``
            code = code[:, : width - n + 1] * self.base + mat[:, n - 1:]
            valid = (np.arange(width - n + 1)[None, :] + n) <= lengths[:, None]
            r, _ = np.nonzero(valid)
            out_rows.append(r)
            out_codes.append(code[valid] + n * self.base ** MAX_ORDER)
            out_orders.append(np.full(len(r), n - 1, np.int64))
        return np.concatenate(out_rows), np.concatenate(out_codes), np.concatenate(out_orders)


class CiderD:
    """CIDEr-D with document frequencies from a fixed reference corpus (one reference set per image)."""

    def __init__(self, reference_sets: Iterable[Iterable[Caption]], sigma: float = SIGMA,
                 vocab_size: Optional[int] = None):
        sets = [_as_arrays(refs) for refs in reference_sets]
        if not sets:
            raise ValueError("CIDEr-D needs a reference corpus with at least one image")
        top = max((int(r.max()) for refs in sets for r in refs if len(r)), default=0)
        if any(int(r.min()) < 0 for refs in sets for r in refs if len(r)):
            raise ValueError("token ids must be >= 0")
        self.base = max(int(vocab_size or 0), top + 1, 2)
        self.packer = _Packer(self.base)
        self.sigma = float(sigma)
        self.images = len(sets)
        self.log_images = float(np.log(float(self.images)))
        # document frequency: images whose reference set holds the n-gram
        flat = [r for refs in sets for r in refs]
        owner = np.repeat(np.arange(len(sets)), [len(refs) for refs in sets])
        rows, codes, _ = self.packer.ngrams(flat)
        pairs = np.unique(np.stack([owner[rows], codes], 1), axis=0) if len(codes) else np.zeros([0, 2], np.int64)
        self.df_codes, self.df_counts = np.unique(pairs[:, 1], return_counts=True)

    # ------------------------------------------------------------------ internals
    def _idf(self, codes: np.ndarray) -> np.ndarray:
        df = np.zeros(len(codes), np.float64)
        if len(self.df_codes):
            pos = np.minimum(np.searchsorted(self.df_codes, codes), len(self.df_codes) - 1)
            found = self.df_codes[pos] == codes
            df[found] = self.df_counts[pos[found]]
        return self.log_images - np.log(np.maximum(df, 1.0))

    def _check(self, rows: List[np.ndarray]) -> None:
        for r in rows:
            if len(r) and (int(r.min()) < 0 or int(r.max()) >= self.base):
                raise ValueError(f"token id outside [0, {self.base}) in a caption to score")

    # ------------------------------------------------------------------ API
    def scores(self, hypotheses: Sequence[Caption], references: Sequence[Sequence[Caption]]) -> np.ndarray:
        """CIDEr-D of each hypothesis against its own reference set -> float64 [len(hypotheses)].

        ``references[i]`` is the reference set of ``hypotheses[i]`` (several hypotheses may share one
        image's set: pass the same list). An empty reference set raises ValueError."""
        hyps = _as_arrays(hypotheses)
        if len(references) != len(hyps):
            raise ValueError(f"{len(hyps)} hypotheses but {len(references)} reference sets")
        if not hyps:
            return np.zeros(0, np.float64)
        # distinct reference sets (by identity), so an image's K samples share one set's n-grams
        set_index, sets = [], []
        seen = {}
        for refs in references:
            key = id(refs)
            if key not in seen:
                seen[key] = len(sets)
                sets.append(_as_arrays(refs))
                if not sets[-1]:
                    raise ValueError("an empty reference set")
            set_index.append(seen[key])
        set_index = np.asarray(set_index, np.int64)
        refs_flat = [r for s in sets for r in s]
        ref_owner = np.repeat(np.arange(len(sets)), [len(s) for s in sets])           # ref row -> set
        set_start = np.concatenate([[0], np.cumsum([len(s) for s in sets])])
        self._check(hyps)
        self._check(refs_flat)
        rows = hyps + refs_flat                                                        # hyps first
        n_h = len(hyps)
        r_idx, codes, orders = self.packer.ngrams(rows)
        # term frequencies per (row, n-gram): dense n-gram ids, then unique (row, id) keys
        uniq_codes, code_id = np.unique(codes, return_inverse=True)
        u = max(len(uniq_codes), 1)
        keys, tf = np.unique(r_idx * u + code_id, return_counts=True)
        k_row, k_code = keys // u, keys % u
        order_of_code = np.zeros(u, np.int64)
        order_of_code[code_id] = orders
        k_order = order_of_code[k_code]
        value = tf * self._idf(uniq_codes)[k_code] if len(keys) else np.zeros(0)
        norm = np.sqrt(np.bincount(k_row * MAX_ORDER + k_order, weights=value ** 2,
                                   minlength=len(rows) * MAX_ORDER)).reshape(len(rows), MAX_ORDER)
        length = np.array([max(len(r) - 1, 0) for r in rows], np.float64)             # bigram count
        # pairs (hypothesis, reference of its set)
        n_refs = np.array([len(s) for s in sets], np.int64)[set_index]                 # [n_h]
        pair_h = np.repeat(np.arange(n_h), n_refs)
        n_pairs = len(pair_h)
        within = np.arange(n_pairs) - np.repeat(np.cumsum(n_refs) - n_refs, n_refs)
        pair_r = n_h + set_start[set_index][pair_h] + within
        # hypothesis entries (keys sorted by row: hyp rows first), expanded over each hyp's pairs
        h_mask = k_row < n_h
        h_rows, h_code, h_order, h_val = k_row[h_mask], k_code[h_mask], k_order[h_mask], value[h_mask]
        h_start = np.searchsorted(h_rows, np.arange(n_h))
        h_count = np.searchsorted(h_rows, np.arange(n_h), side="right") - h_start
        per_pair = h_count[pair_h]
        total = int(per_pair.sum())
        pair_of = np.repeat(np.arange(n_pairs), per_pair)
        offset = np.arange(total) - np.repeat(np.cumsum(per_pair) - per_pair, per_pair)
        entry = h_start[pair_h][pair_of] + offset
        want = pair_r[pair_of] * u + h_code[entry]
        pos = np.searchsorted(keys, want)
        pos_c = np.minimum(pos, len(keys) - 1)
        hit = keys[pos_c] == want
        v_ref = np.where(hit, value[pos_c], 0.0)
        v_hyp = h_val[entry]
        contrib = np.minimum(v_hyp, v_ref) * v_ref
        num = np.bincount(pair_of * MAX_ORDER + h_order[entry], weights=contrib,
                          minlength=n_pairs * MAX_ORDER).reshape(n_pairs, MAX_ORDER)
        denom = norm[pair_h] * norm[pair_r]
        sim = np.where(denom != 0, num / np.where(denom != 0, denom, 1.0), num)
        delta = length[pair_h] - length[pair_r]
        sim = sim * np.exp(-(delta ** 2) / (2 * self.sigma ** 2))[:, None]
        per_hyp = np.bincount(pair_h, weights=sim.mean(axis=1), minlength=n_h)
        return per_hyp / n_refs * 10.0

    def score(self, hypotheses: Sequence[Caption], references: Sequence[Sequence[Caption]]) -> float:
        """Corpus CIDEr-D: the mean of :meth:`scores` (pycocoevalcap's corpus score)."""
        return float(np.mean(self.scores(hypotheses, references)))


def strip_special(caption: Caption, end_id: int, pad_id: int = 0, keep_end: bool = True) -> List[int]:
    """Token ids up to (and with ``keep_end``, including) the first ``end_id``; ``pad_id`` dropped."""
    out: List[int] = []
    for t in np.asarray(caption).ravel():
        t = int(t)
        if t == end_id:
            if keep_end:
                out.append(t)
            break
        if t != pad_id:
            out.append(t)
    return out
