"""``stats.json`` of a ``--data`` directory (written by ``captionbeam captions``): what went into the
records, typed. Read it with :meth:`DataStats.load` / :meth:`DataStats.from_json`; keys a hand-written
file leaves out take the defaults below."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional

from captionbeam.model import gfile

STATS_FILE = "stats.json"


@dataclass
class DataStats:
    captions_file: Optional[str] = None
    format: str = ""                      # captions file format (flickr8k, kaggle, coco, jsonl)
    clean: str = "seed"                   # --clean rules the captions went through
    min_count: int = 5
    vocab_split: Optional[str] = None     # the split the vocabulary was built on (None: given vocabulary)
    vocab_source: str = "built"           # "built" or the --vocab file
    features: Optional[str] = None        # the --features directory (None: captions-only records)
    split_files: Dict[str, str] = field(default_factory=dict)
    keep_empty: bool = False
    max_caption_tokens: int = 50          # --max-caption-tokens: longer captions were cut to it
    split_order: List[str] = field(default_factory=list)
    record_kind: str = "examples"         # "examples" (with features) or "captions"
    vocab_size: int = 0
    tokens_in_vocab_split: int = 0
    distinct_tokens_in_vocab_split: int = 0
    max_caption_length: int = 0
    max_token_count: int = 0              # count of the vocabulary split's most frequent token
    # captions cut to --max-caption-tokens: {"captions", "tokens_cut", "max_caption_tokens"}
    truncated: Dict[str, int] = field(default_factory=dict)
    # per split: images, captions, tokens, unknown_tokens, unknown_rate, max_caption_length, records, shards...
    splits: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    join: Dict[str, Any] = field(default_factory=dict)          # joined, <category> counts, images_total, lists
    dead_letters: Dict[str, int] = field(default_factory=dict)  # total and per stage

    def split_images(self, split: str) -> Optional[int]:
        """Images in ``split``'s records, None when the file does not say."""
        n = (self.splits.get(split) or {}).get("images")
        return None if n is None else int(n)

    def ordered_splits(self) -> List[str]:
        return self.split_order or list(self.splits)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "DataStats":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    @classmethod
    def from_json(cls, text: str) -> "DataStats":
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, directory: str) -> Optional["DataStats"]:
        """``<directory>/stats.json`` (local or gs://, through ``tf.io.gfile``), None when there is none."""
        text = gfile.read_text(gfile.join(directory, STATS_FILE))
        return None if text is None else cls.from_json(text)
