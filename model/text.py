"""Caption cleaning and tokenisation: pure functions, no TensorFlow.

``seed`` reproduces the classic merge-model tutorial exactly:
split on whitespace, lowercase, strip ASCII punctuation from each token, drop tokens of
one character or less, drop tokens that are not purely alphabetic.
"""
from __future__ import annotations

import re
import string
import unicodedata
from typing import Callable, Dict, List

START = "<start>"
END = "<end>"

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)
# Words of letters and digits (any script), with an optional apostrophe suffix ("dog's").
_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


def clean_seed(caption: str) -> List[str]:
    """The tutorial's ``clean_descriptions``: returns the kept tokens."""
    tokens = caption.split()
    tokens = [t.lower() for t in tokens]
    tokens = [t.translate(_PUNCT_TABLE) for t in tokens]
    tokens = [t for t in tokens if len(t) > 1]
    tokens = [t for t in tokens if t.isalpha()]
    return tokens


def clean_basic(caption: str) -> List[str]:
    """NFKC-normalise, lowercase, split into words of letters and digits (any script); hyphens and
    other punctuation separate words ("black-and-white" -> black, and, white), an apostrophe
    suffix stays with its word ("dog's"), one-letter words ("a") and numbers ("2") are kept."""
    text = unicodedata.normalize("NFKC", caption).translate(_APOSTROPHES).lower()
    return _WORD_RE.findall(text)


def clean_none(caption: str) -> List[str]:
    """Whitespace split only."""
    return caption.split()


CLEANERS: Dict[str, Callable[[str], List[str]]] = {
    "seed": clean_seed,
    "basic": clean_basic,
    "none": clean_none,
}


def get_cleaner(name: str) -> Callable[[str], List[str]]:
    try:
        return CLEANERS[name]
    except KeyError:
        raise ValueError(f"--clean: unknown cleaning rule {name!r}; choose one of {sorted(CLEANERS)}") from None


def wrap(tokens: List[str]) -> List[str]:
    """Wrap a cleaned caption in the start and end tokens."""
    return [START, *tokens, END]
