"""The vocabulary: reserved ids, deterministic order, file round trip, and the Beam step that builds it."""
import random

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from captionbeam.model.vocab import END_ID, PAD_ID, RESERVED, START_ID, UNK, UNK_ID, Vocabulary, order_tokens
from captionbeam.pipelines.options import pipeline_options
from captionbeam.pipelines.vocabulary import BuildVocabulary, CountTokens, token_counts_text, vocabulary_from_counts


def test_reserved_ids():
    assert RESERVED == ("<pad>", "<unk>", "<start>", "<end>")
    assert (PAD_ID, UNK_ID, START_ID, END_ID) == (0, 1, 2, 3)


def test_order_is_frequency_then_alphabetical_with_min_count():
    counts = {"dog": 3, "cat": 5, "ant": 3, "bee": 3, "rare": 1, "<unk>": 99, "zebra": 5}
    assert order_tokens(counts, 1) == ["cat", "zebra", "ant", "bee", "dog", "rare"]
    assert order_tokens(counts, 3) == ["cat", "zebra", "ant", "bee", "dog"]
    v = Vocabulary.from_counts(counts, 4)
    assert v.tokens == RESERVED + ("cat", "zebra")
    assert len(v) == 6


def test_encode_decode():
    v = Vocabulary.from_counts({"a": 2, "dog": 2}, 1)
    ids = v.encode(["<start>", "dog", "wolf", "a", "<end>"])
    assert ids == [START_ID, v.index["dog"], UNK_ID, v.index["a"], END_ID]
    assert v.decode(ids + [PAD_ID, PAD_ID]) == ["dog", UNK, "a"]
    assert v.decode([START_ID, 99], strip=True) == [UNK]  # out of range -> <unk>


def test_file_round_trip(tmp_path):
    v = Vocabulary.from_counts({"b": 2, "a": 2, "c": 9}, 1)
    path = str(tmp_path / "vocab.txt")
    v.save(path)
    with open(path) as f:
        assert f.read() == "<pad>\n<unk>\n<start>\n<end>\nc\na\nb\n"
    assert Vocabulary.load(path) == v
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        Vocabulary.load(str(tmp_path / "missing.txt"))


def test_invalid_vocabularies():
    with pytest.raises(ValueError, match="must start with the reserved tokens"):
        Vocabulary(("a", "b", "c", "d"))
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary(RESERVED + ("a", "a"))


def test_vocabulary_from_counts_merges_partial_counts():
    v = vocabulary_from_counts([("a", 1), ("b", 2), ("a", 2)], min_count=3)
    assert v.tokens == RESERVED + ("a",)
    assert token_counts_text([("b", 2), ("a", 3), ("c", 2)]) == "a\t3\nb\t2\nc\t2\n"


def _tokens(seed: int):
    rng = random.Random(seed)
    words = [f"w{i:02d}" for i in range(40)]
    # Zipf-like counts with plenty of ties.
    tokens = [w for i, w in enumerate(words) for _ in range(max(1, 30 // (i + 1)))]
    tokens += ["<start>", "<end>", "<unk>"] * 3  # reserved tokens in the input are never counted
    rng.shuffle(tokens)
    return tokens


@pytest.mark.parametrize("seed,workers", [(1, "1"), (2, "2")])
def test_beam_vocabulary_is_deterministic(seed, workers):
    """Different input orders and worker counts (in-process DirectRunner) give the same vocabulary."""
    tokens = _tokens(seed)
    expected = vocabulary_from_counts([(t, 1) for t in _tokens(0) if t not in RESERVED], min_count=3)
    opts = pipeline_options(["--runner=DirectRunner", f"--direct_num_workers={workers}",
                             "--direct_running_mode=multi_threading"])
    with beam.Pipeline(options=opts) as p:
        # Several Create transforms flattened: the counting sees partial bundles.
        parts = [p | f"Part{k}" >> beam.Create(tokens[k::3]) for k in range(3)]
        vocab = tuple(parts) | beam.Flatten() | BuildVocabulary(min_count=3)
        counts = tuple(parts) | "Flatten again" >> beam.Flatten() | CountTokens()
        assert_that(vocab | beam.Map(lambda v: v.tokens), equal_to([expected.tokens]), label="vocab")
        assert_that(counts | beam.Map(lambda c: c[:2]), equal_to([[("w00", 30), ("w01", 15)]]), label="counts")
    assert expected.tokens[4:8] == ("w00", "w01", "w02", "w03")
    # 30 // (i + 1) >= 3 for i <= 9: exactly ten words kept
    assert len(expected) == 4 + 10


def test_build_vocabulary_rejects_bad_min_count():
    with pytest.raises(ValueError, match="--min-count"):
        BuildVocabulary(min_count=0)
