"""BLEU equals NLTK's corpus_bleu; the COCO wrapper equals pycocoevalcap run directly; loading policy."""
import random
import warnings

import pytest
from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

from captionbeam.model import metrics
from captionbeam.model.caption_files import CaptionFileError
from captionbeam.model.references import MissingIdsError, align, parse_predictions, read_text


def _nltk(refs, hyps, weights):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # NLTK warns on orders without matches
        return nltk_corpus_bleu(refs, hyps, weights=weights)


def _assert_equal_to_nltk(refs, hyps):
    for variant, table in metrics.VARIANTS.items():
        ours = metrics.bleu_scores(refs, hyps, variant=variant)
        for n in range(1, 5):
            expected = _nltk(refs, hyps, table[n])
            assert ours[f"bleu{n}"] == pytest.approx(expected, abs=1e-9, rel=1e-9), (variant, n, refs, hyps)


def _random_corpus(rng):
    vocab = [str(i) for i in range(rng.choice([2, 3, 5, 30]))]
    n = rng.randint(1, 8)
    refs = [[[rng.choice(vocab) for _ in range(rng.randint(0, 14))] for _ in range(rng.randint(1, 5))]
            for _ in range(n)]
    hyps = [[rng.choice(vocab) for _ in range(rng.randint(0, 14))] for _ in range(n)]
    return refs, hyps


def test_random_corpora_equal_nltk():
    rng = random.Random(1234)
    nonzero = 0
    for _ in range(250):
        refs, hyps = _random_corpus(rng)
        _assert_equal_to_nltk(refs, hyps)
        nonzero += metrics.bleu_scores(refs, hyps)["bleu4"] > 1e-6
    assert nonzero > 30, "the random corpora should exercise non-trivial BLEU-4 values"


@pytest.mark.parametrize("refs,hyps", [
    # zero matches at all -> 0
    ([[["a", "b", "c"]]], [["x", "y", "z"]]),
    # unigram matches, no 4-gram match: NLTK's sys.float_info.min precision, not exactly 0
    ([[["the", "cat", "sat", "on", "mat"]]], [["the", "mat", "sat", "cat", "on"]]),
    # hypotheses shorter than n (denominator max(1, 0) per order)
    ([[["a", "dog", "runs"]], [["two", "dogs"]]], [["a"], ["two", "dogs"]]),
    # brevity penalty (short) and no penalty (long)
    ([[["a"] * 28, ["a"] * 28]], [["a"] * 12]),
    ([[["a", "b"]]], [["a", "b", "a", "b", "a"]]),
    # ties in the closest reference length go to the shorter one
    ([[["a"] * 13, ["a"] * 11]], [["a"] * 12]),
    # empty hypothesis among others, and an empty reference
    ([[["a", "dog"], []], [["a", "cat", "is", "here"]]], [[], ["a", "cat", "is", "here"]]),
    # every hypothesis empty
    ([[["a", "dog"]], [["b"]]], [[], []]),
    # NLTK's own docstring example (0.5920...)
    ([[("It is a guide to action that ensures that the military will forever heed Party commands").split(),
       ("It is the guiding principle which guarantees the military forces always being under the command of "
        "the Party").split(),
       "It is the practical guide for the army always to heed the directions of the party".split()],
      ["he was interested in world history because he read the book".split()]],
     ["It is a guide to action which ensures that the military always obeys the commands of the party".split(),
      "he read the book because he was interested in world history".split()]),
])
def test_edge_cases_equal_nltk(refs, hyps):
    _assert_equal_to_nltk(refs, hyps)


def test_known_values():
    refs = [[("It is a guide to action that ensures that the military will forever heed Party commands").split()],
            ["he was interested in world history because he read the book".split()]]
    hyps = ["It is a guide to action which ensures that the military always obeys the commands of the party".split(),
            "he read the book because he was interested in world history".split()]
    assert metrics.corpus_bleu(refs, hyps) == pytest.approx(_nltk(refs, hyps, (0.25,) * 4), abs=1e-12)
    assert metrics.bleu_scores([[["a", "b", "c"]]], [["x", "y"]])["bleu1"] == 0.0
    # no 4-gram overlap gives NLTK's ~1e-77, not a real score
    assert 0 < metrics.bleu_scores([[["the", "cat", "sat", "on", "mat"]]],
                                   [["the", "mat", "sat", "cat", "on"]])["bleu4"] < 1e-50


def test_tutorial_variant_changes_only_bleu3():
    rng = random.Random(7)
    refs, hyps = [], []
    for _ in range(30):
        base = [rng.choice("abcdef") for _ in range(10)]
        refs.append([base, base[2:]])
        hyps.append(base[:4] + [rng.choice("abcdefgh") for _ in range(5)])
    nltk_scores = metrics.bleu_scores(refs, hyps, "nltk")
    tut = metrics.bleu_scores(refs, hyps, "tutorial")
    assert tut["bleu3"] == pytest.approx(_nltk(refs, hyps, (0.3, 0.3, 0.3, 0)), abs=1e-12)
    assert tut["bleu3"] != pytest.approx(nltk_scores["bleu3"], abs=1e-6)
    for n in (1, 2, 4):
        assert tut[f"bleu{n}"] == pytest.approx(nltk_scores[f"bleu{n}"], abs=1e-12)


def test_empty_corpus_scores_zero_where_nltk_divides_by_zero():
    with pytest.raises(ZeroDivisionError):
        _nltk([], [], (0.25,) * 4)
    assert metrics.bleu_scores([], []) == {"bleu1": 0.0, "bleu2": 0.0, "bleu3": 0.0, "bleu4": 0.0}


def test_image_without_references_is_a_clear_error():
    with pytest.raises(ValueError, match="no reference"):
        metrics.bleu_scores([[]], [["a"]])


def test_statistics_explain_the_score():
    stats = metrics.corpus_statistics([[["a", "b", "c", "d"]]], [["a", "b", "x"]])
    assert stats.numerators == (2, 1, 0, 0)
    assert stats.denominators == (3, 2, 1, 1)     # shorter than 4: max(1, 0)
    assert (stats.hyp_length, stats.ref_length) == (3, 4)


def test_default_tokenizer_lowercases_and_splits_on_whitespace():
    refs = {"x": ["A Dog  runs\tFast"]}
    scores, stats = metrics.bleu_for_texts(refs, {"x": "a dog RUNS fast"})
    assert scores["bleu4"] == pytest.approx(1.0)
    scores, _ = metrics.bleu_for_texts(refs, {"x": "a dog RUNS fast"}, tokenizer="none")
    assert scores["bleu1"] < 1.0
    with pytest.raises(ValueError, match="--bleu-tokenizer"):
        metrics.get_tokenizer("nope")


def test_unicode_text_is_scored_not_crashed():
    refs = {"a": ["Un café naïve à Zürich", "日本 の 犬"], "b": ["ÉCOLE ouverte"]}
    preds = {"a": "un CAFÉ naïve", "b": "école ouverte"}
    scores, _ = metrics.bleu_for_texts(refs, preds)
    expected = _nltk([[r.lower().split() for r in refs[i]] for i in preds],
                     [preds[i].lower().split() for i in preds], (1.0,))
    assert scores["bleu1"] == pytest.approx(expected, abs=1e-12) and scores["bleu1"] > 0.5


# ----------------------------------------------------------------------------- loading and alignment
def test_predictions_policy():
    preds = parse_predictions('{"image_id": "x.jpg", "caption": "a dog"}\n\n{"image_id": "y", "caption": ""}\n')
    assert dict(preds) == {"x": "a dog", "y": ""}
    with pytest.raises(CaptionFileError, match=r"predictions:2: image 'x' predicted twice"):
        parse_predictions('{"image_id": "x", "caption": "a"}\n{"image_id": "x.jpg", "caption": "b"}\n')
    with pytest.raises(CaptionFileError, match=r"predictions:1: 'caption' must be a string"):
        parse_predictions('{"image_id": "x", "caption": null}\n')
    with pytest.raises(CaptionFileError, match=r"predictions:1: not a JSON object"):
        parse_predictions('{"image_id": "x", "caption": "a"\n')
    with pytest.raises(CaptionFileError, match="lone surrogate"):
        parse_predictions('{"image_id": "x", "caption": "bad \\ud800"}\n')


def test_read_text_reports_invalid_utf8_with_line(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_bytes(b'{"image_id": "x", "caption": "ok"}\n{"image_id": "y", "caption": "caf\xe9"}\n')
    with pytest.raises(CaptionFileError, match=r"p.jsonl:2: not UTF-8"):
        read_text(str(p))
    p.write_bytes(b'\xef\xbb\xbf{"image_id": "x", "caption": "ok"}\n')   # BOM tolerated
    assert parse_predictions(read_text(str(p)))["x"] == "ok"


def test_alignment_policy():
    refs = {"a": ["r"], "b": ["r"], "c": ["r"]}
    with pytest.raises(MissingIdsError, match=r"1 of 3 predicted images have no reference captions \('z'\).*"
                                              r"1 of 3 referenced images have no prediction \('c'\)"):
        align({"a": "x", "b": "y", "z": "w"}, refs)
    al = align({"a": "x", "b": "", "z": "w"}, refs, allow_missing=True)
    assert al.ids == ["a", "b"] and al.summary()["missing_references"] == 1
    assert al.summary()["missing_predictions"] == 1 and al.empty_predictions == 1
    al = align({"a": "x", "z": "w"}, refs, image_ids=["a"])
    assert al.ids == ["a"] and al.outside_image_ids == 1
    with pytest.raises(MissingIdsError, match="no image is on both sides"):
        align({"z": "w"}, refs, allow_missing=True)
