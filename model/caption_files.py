"""Caption and reference files: pure parsers, one function per format, one dispatcher.

Formats (``detect_format`` picks one from the name and first bytes; ``--format`` flags force it):
- ``flickr8k``: ``<file>#<n>\\t<caption>`` per line (``Flickr8k.token.txt``; tolerates the known
  ``2258277193_586949ec62.jpg.1#0`` line: the id is the file name up to its image extension).
- ``kaggle``: CSV with a header ``image,caption`` (Kaggle's Flickr8k ``captions.txt``).
- ``coco``: COCO captions JSON (``images`` with ``id``/``file_name``, ``annotations`` with
  ``image_id``/``caption``); ids are the file names without extension, as elsewhere.
- ``jsonl``: JSON lines ``{"image_id": ..., "captions": [...]}`` or ``{"image_id": ..., "caption": ...}``.

Every parser yields ``(image_id, caption)`` pairs; ``image_id`` is the file name without extension.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections import OrderedDict
from typing import Dict, Iterable, Iterator, List, Tuple

FORMATS = ("flickr8k", "kaggle", "coco", "jsonl")
_IMAGE_EXT = re.compile(r"\.(jpe?g|png|webp|bmp|gif|tiff?)$", re.IGNORECASE)


class CaptionFileError(ValueError):
    """A caption or reference file that cannot be parsed; the message names the file and line."""


def image_id(name: str) -> str:
    """File name (or path) -> id: the base name without its image extension (``.jpg.1`` quirk included)."""
    name = str(name).strip().replace("\\", "/").rsplit("/", 1)[-1]
    m = re.search(r"\.(jpe?g|png|webp|bmp|gif|tiff?)(\.\d+)?$", name, re.IGNORECASE)
    if m:
        return name[: m.start()]
    return name


def parse_flickr8k_line(line: str, where: str = "") -> Tuple[str, str]:
    if "\t" not in line:
        raise CaptionFileError(f"{where}: expected '<file>#<n><TAB><caption>', got {line[:80]!r}")
    key, caption = line.split("\t", 1)
    name = key.rsplit("#", 1)[0] if "#" in key else key
    return image_id(name), caption.strip()


def parse_flickr8k(text: str, source: str = "captions") -> Iterator[Tuple[str, str]]:
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield parse_flickr8k_line(line.rstrip("\r\n"), f"{source}:{n}")


def parse_kaggle(text: str, source: str = "captions") -> Iterator[Tuple[str, str]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
        raise CaptionFileError(f"{source}:1: expected a CSV header 'image,caption', got {header!r}")
    for n, row in enumerate(reader, 2):
        if not row:
            continue
        if len(row) < 2:
            raise CaptionFileError(f"{source}:{n}: expected 'image,caption', got {row!r}")
        yield image_id(row[0]), ",".join(row[1:]).strip()


def parse_coco(text: str, source: str = "captions") -> Iterator[Tuple[str, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CaptionFileError(f"{source}: not valid COCO JSON: {e}") from None
    if not isinstance(data, dict) or "annotations" not in data:
        raise CaptionFileError(f"{source}: COCO captions JSON needs an 'annotations' list")
    names = {img["id"]: image_id(img.get("file_name", img["id"])) for img in data.get("images", [])}
    for ann in data["annotations"]:
        yield names.get(ann["image_id"], str(ann["image_id"])), str(ann["caption"]).strip()


def parse_jsonl(text: str, source: str = "captions") -> Iterator[Tuple[str, str]]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CaptionFileError(f"{source}:{n}: not a JSON object: {e}") from None
        if not isinstance(row, dict) or "image_id" not in row:
            raise CaptionFileError(f"{source}:{n}: expected an object with 'image_id'")
        iid = image_id(str(row["image_id"]))
        if "captions" in row:
            for c in row["captions"]:
                yield iid, str(c).strip()
        elif "caption" in row:
            yield iid, str(row["caption"]).strip()
        else:
            raise CaptionFileError(f"{source}:{n}: expected 'caption' or 'captions'")


PARSERS = {"flickr8k": parse_flickr8k, "kaggle": parse_kaggle, "coco": parse_coco, "jsonl": parse_jsonl}


def detect_format(name: str, head: str) -> str:
    """Guess the format from the file name and its first characters."""
    lower = name.lower()
    stripped = head.lstrip()
    if lower.endswith(".jsonl") or (stripped.startswith("{") and "\n{" in stripped):
        return "jsonl"
    if lower.endswith(".json") or stripped.startswith("{"):
        return "coco"
    first = stripped.split("\n", 1)[0].lower()
    if first.replace(" ", "").startswith("image,caption"):
        return "kaggle"
    return "flickr8k"


def parse(text: str, fmt: str = "auto", source: str = "captions") -> List[Tuple[str, str]]:
    if fmt == "auto":
        fmt = detect_format(source, text[:4096])
    if fmt not in PARSERS:
        raise CaptionFileError(f"unknown caption format {fmt!r}; choose one of {FORMATS} or 'auto'")
    return list(PARSERS[fmt](text, source))


def group(pairs: Iterable[Tuple[str, str]]) -> "OrderedDict[str, List[str]]":
    """(id, caption) pairs -> id -> captions, in first-seen order."""
    out: "OrderedDict[str, List[str]]" = OrderedDict()
    for iid, cap in pairs:
        out.setdefault(iid, []).append(cap)
    return out


def parse_split_file(text: str) -> List[str]:
    """Flickr8k split file (one image file name per line) -> image ids."""
    return [image_id(line) for line in text.splitlines() if line.strip()]
