"""model.cider (the SCST reward and dev selection metric) equals pycocoevalcap's CIDEr-D (``Cider``,
what ``model.coco_metrics`` reports as CIDEr) per caption, on random corpora of token ids."""
import numpy as np
import pytest

from captionbeam.model.cider import CiderD, strip_special


def _random_corpus(rng, images, vocab=12, max_len=12):
    refs = [[list(rng.integers(0, vocab, rng.integers(0, max_len + 1))) for _ in range(rng.integers(1, 6))]
            for _ in range(images)]
    return refs


def _words(ids):
    return " ".join(f"w{int(t)}" for t in ids)


def _pycocoevalcap(refs, hyps):
    """pycocoevalcap's own scorer on the same tokens (no PTB tokenizer: the tokens are given)."""
    from pycocoevalcap.cider.cider import Cider
    gts = {i: [_words(r) for r in refs[i]] for i in range(len(refs))}
    res = {i: [_words(hyps[i])] for i in range(len(refs))}
    corpus, per = Cider().compute_score(gts, res)
    return float(corpus), np.asarray(per, np.float64)


@pytest.mark.parametrize("seed", range(6))
def test_equals_pycocoevalcap_per_caption(seed):
    rng = np.random.default_rng(seed)
    refs = _random_corpus(rng, images=int(rng.integers(2, 40)), vocab=int(rng.integers(3, 30)))
    hyps = [list(rng.integers(0, 30, rng.integers(0, 14))) for _ in refs]
    hyps[0] = list(refs[0][0])                               # an exact match
    corpus, per = _pycocoevalcap(refs, hyps)
    scorer = CiderD(refs, vocab_size=30)
    mine = scorer.scores(hyps, refs)
    np.testing.assert_allclose(mine, per, rtol=0, atol=1e-6)
    assert scorer.score(hyps, refs) == pytest.approx(corpus, abs=1e-6)
    assert per.max() > 0.5                                    # not a corpus of zeros


def test_document_frequencies_from_a_given_corpus_and_several_samples_per_image():
    """SCST's use: df from the training references, K samples of a few images scored in one batch; each
    equals pycocoevalcap scoring that sample in the whole corpus."""
    rng = np.random.default_rng(7)
    corpus = _random_corpus(rng, images=30, vocab=8)
    scorer = CiderD(corpus)
    chosen = [3, 11, 11, 25]                                  # an image may come twice in a batch
    K = 3
    samples = {(i, k): list(rng.integers(0, 8, rng.integers(1, 10))) for i in chosen for k in range(K)}
    samples[(3, 0)] = list(max(corpus[3], key=len))
    hyps = [samples[(i, k)] for i in chosen for k in range(K)]
    sets = [corpus[i] for i in chosen for _ in range(K)]
    mine = scorer.scores(hyps, sets)
    for row, (i, k) in enumerate((i, k) for i in chosen for k in range(K)):
        filler = [list(c[0]) for c in corpus]
        filler[i] = samples[(i, k)]
        _, per = _pycocoevalcap(corpus, filler)
        assert mine[row] == pytest.approx(per[i], abs=1e-6), (i, k)
    assert mine[0] > 1.0 and mine.min() >= 0.0               # a reference itself scores high


def test_strip_special_and_bad_input():
    assert strip_special([5, 6, 3, 7, 0], end_id=3) == [5, 6, 3]
    assert strip_special([5, 6, 3, 7], end_id=3, keep_end=False) == [5, 6]
    assert strip_special([5, 0, 6], end_id=3) == [5, 6]
    scorer = CiderD([[[1, 2, 3]]], vocab_size=5)
    with pytest.raises(ValueError, match="token id outside"):
        scorer.scores([[9]], [[[1, 2]]])
    with pytest.raises(ValueError, match="empty reference set"):
        scorer.scores([[1]], [[]])
    with pytest.raises(ValueError, match="at least one image"):
        CiderD([])
