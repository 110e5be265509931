"""The vocabulary: reserved tokens, deterministic ordering, the ``vocab.txt`` file.

File format: one token per line, line number = id. Ids 0..3 are always
``<pad>``, ``<unk>``, ``<start>``, ``<end>``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

from captionbeam.model.text import END, START

PAD = "<pad>"
UNK = "<unk>"
RESERVED: Tuple[str, ...] = (PAD, UNK, START, END)
PAD_ID, UNK_ID, START_ID, END_ID = 0, 1, 2, 3
VOCAB_FILE = "vocab.txt"


def order_tokens(counts: Mapping[str, int], min_count: int) -> List[str]:
    """Tokens kept (count >= min_count), frequency descending then alphabetical; reserved excluded."""
    kept = [(t, c) for t, c in counts.items() if c >= min_count and t not in RESERVED]
    kept.sort(key=lambda tc: (-tc[1], tc[0]))
    return [t for t, _ in kept]


def extended_vocabulary(old_tokens: Sequence[str], captions: Iterable[str], clean: str, min_count: int) -> List[str]:
    """The old vocabulary with ids unchanged, plus the new words of ``captions`` (cleaned with the rule
    ``clean``) seen ``min_count`` times, frequency descending then alphabetical, appended at the end."""
    from captionbeam.model.text import get_cleaner
    cleaner = get_cleaner(clean)
    counts: Dict[str, int] = {}
    for c in captions:
        for t in cleaner(c):
            counts[t] = counts.get(t, 0) + 1
    known = set(old_tokens)
    return list(old_tokens) + [t for t in order_tokens(counts, min_count) if t not in known]


@dataclass(frozen=True)
class Vocabulary:
    tokens: Tuple[str, ...]

    def __post_init__(self):
        if tuple(self.tokens[: len(RESERVED)]) != RESERVED:
            raise ValueError(f"vocabulary must start with the reserved tokens {RESERVED}, got {self.tokens[:4]}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary has duplicate tokens")

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], min_count: int = 5) -> "Vocabulary":
        return cls(RESERVED + tuple(order_tokens(counts, min_count)))

    @functools.cached_property
    def index(self) -> Dict[str, int]:
        """token -> id (computed once per object)."""
        return {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Sequence[str]) -> List[int]:
        index = self.index
        return [index.get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int], strip: bool = True) -> List[str]:
        out = []
        for i in ids:
            i = int(i)
            if strip and i == END_ID:
                break
            if strip and i in (PAD_ID, START_ID):
                continue
            out.append(self.tokens[i] if 0 <= i < len(self.tokens) else UNK)
        return out

    def to_text(self) -> str:
        return "".join(t + "\n" for t in self.tokens)

    def sha256(self) -> str:
        """SHA-256 of the ``vocab.txt`` bytes this vocabulary saves (recorded in ``config.json``)."""
        import hashlib
        return hashlib.sha256(self.to_text().encode("utf-8")).hexdigest()

    @classmethod
    def from_text(cls, text: str) -> "Vocabulary":
        return cls(tuple(line for line in text.split("\n") if line != ""))

    def save(self, path: str) -> None:
        from captionbeam.model import gfile  # gs:// on real GCP; local paths alike; committed atomically
        gfile.write_text(path, self.to_text())

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        import tensorflow as tf
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        with tf.io.gfile.GFile(path, "r") as f:
            return cls.from_text(f.read())
