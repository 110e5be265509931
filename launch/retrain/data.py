"""The root's captions and split files (``ROOT/data/``): every caption seen so far in the Flickr8k token
format, and split files where dev and test stay fixed and new images join train."""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence, Set, Tuple

import captionbeam.pipelines.io as pio


def flickr8k_lines(pairs: Iterable[Tuple[str, str]]) -> str:
    """(image id, caption) pairs -> Flickr8k token lines ``ID.jpg#N<TAB>caption``."""
    counters: Dict[str, int] = {}
    lines = []
    for iid, cap in pairs:
        n = counters.get(iid, 0)
        counters[iid] = n + 1
        lines.append(f"{iid}.jpg#{n}\t{' '.join(cap.split())}\n")
    return "".join(lines)


def flickr8k_text(captions: Dict[str, List[str]]) -> str:
    return flickr8k_lines((i, c) for i, cs in captions.items() for c in cs)


def split_text(ids: Sequence[str]) -> str:
    """A Flickr8k-style split file: one image file name per line."""
    return "".join(f"{i}.jpg\n" for i in ids)


def read_captions(files: Sequence[str], fmt: str = "auto") -> Dict[str, List[str]]:
    """image id -> captions, from caption files in any supported format."""
    from captionbeam.model.caption_files import group, parse
    pairs: List[Tuple[str, str]] = []
    for f in files:
        pairs += parse(pio.read_text(f), fmt, source=f)
    return dict(group(pairs))


def read_split(path: str) -> List[str]:
    from captionbeam.model.caption_files import parse_split_file
    return parse_split_file(pio.read_text(path))


def ids_in_splits(root) -> Set[str]:
    """Every image id in one of the root's split files."""
    known: Set[str] = set()
    for split_file in pio.match([root.path("data", "*.txt")]):
        if pio.basename(split_file) != "captions.txt":
            known.update(read_split(split_file))
    return known
