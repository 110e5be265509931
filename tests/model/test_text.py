"""Caption cleaning: ``--clean seed`` must be the classic tutorial's ``clean_descriptions`` exactly."""
import string

import pytest

from captionbeam.model.text import END, START, clean_basic, clean_none, clean_seed, get_cleaner, wrap


def tutorial_clean(desc: str):
    """The tutorial's code, verbatim in substance (Brownlee, 'How to Develop a Deep Learning Photo
    Caption Generator from Scratch'): the reference ``clean_seed`` must agree with."""
    table = str.maketrans("", "", string.punctuation)
    desc = desc.split()
    desc = [word.lower() for word in desc]
    desc = [w.translate(table) for w in desc]
    desc = [word for word in desc if len(word) > 1]
    desc = [word for word in desc if word.isalpha()]
    return desc


SEED_CASES = [
    # (caption, expected tokens)
    ("A child in a pink dress is climbing up a set of stairs in an entry way .",
     ["child", "in", "pink", "dress", "is", "climbing", "up", "set", "of", "stairs", "in", "an", "entry", "way"]),
    # one-letter words go, also after punctuation is stripped ("I." -> "i")
    ("A I x y. I. z!", []),
    # hyphens are removed inside the token, not split on
    ("A black-and-white dog", ["blackandwhite", "dog"]),
    ("an e-mail from the U.S.", ["an", "email", "from", "the", "us"]),
    # possessives and contractions lose the apostrophe
    ("The dog's bone isn't rock'n'roll", ["the", "dogs", "bone", "isnt", "rocknroll"]),
    # digits: pure numbers and tokens with digits are dropped, even after stripping punctuation
    ("Two dogs play with 3 balls in the 2nd round , 10-year-old boy", ["two", "dogs", "play", "with", "balls", "in",
                                                                         "the", "round", "boy"]),
    # unicode letters are alphabetic for str.isalpha (kept); non-ASCII punctuation is NOT stripped
    ("Café naïve résumé's", ["café", "naïve", "résumés"]),
    ("“Quoted” — dash…", []),
    # any whitespace splits; case folds; pure punctuation tokens vanish
    ("  DOG\truns\n\nFAST ... !!! ", ["dog", "runs", "fast"]),
    ("", []),
    ("(parenthesised) [brackets] {braces} <angle> #hash @at", ["parenthesised", "brackets", "braces", "angle",
                                                              "hash", "at"]),
    # underscore and other ASCII punctuation glue words together after removal
    ("snake_case a/b c+d", ["snakecase", "ab", "cd"]),
]


@pytest.mark.parametrize("caption,expected", SEED_CASES)
def test_clean_seed_rules(caption, expected):
    assert clean_seed(caption) == expected
    assert clean_seed(caption) == tutorial_clean(caption)


def test_clean_seed_agrees_with_the_tutorial_on_tricky_strings():
    tricky = ["Mr. O'Neil's 4x4 jeep", "ALL CAPS SHOUT", "tab\tseparated\u00a0nbsp", "ß straße", "İstanbul",
              "x-ray X-Ray", "don't", "3.5 stars", "emoji 🙂 ok", "a\u2019s curly", "ﬁne ligature"]
    for text in tricky:
        assert clean_seed(text) == tutorial_clean(text), text


def test_clean_basic_keeps_short_words_numbers_and_splits_hyphens():
    assert clean_basic("A black-and-white dog’s toy, 2 dogs!") == ["a", "black", "and", "white", "dog's", "toy", "2",
                                                                   "dogs"]
    assert clean_basic("Café NAÏVE") == ["café", "naïve"]
    assert clean_basic("ﬁne") == ["fine"]  # NFKC folds the ligature
    assert clean_basic("...") == []


def test_clean_none_is_whitespace_split():
    assert clean_none("A  Dog's\tday .") == ["A", "Dog's", "day", "."]


def test_wrap_and_get_cleaner():
    assert wrap(["a", "dog"]) == [START, "a", "dog", END]
    assert get_cleaner("seed") is clean_seed
    with pytest.raises(ValueError, match="--clean"):
        get_cleaner("fancy")
