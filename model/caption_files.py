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
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Tuple, Union

from captionbeam.model import jsonl

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


@dataclass(frozen=True)
class CaptionRow:
    """One caption of one image; ``order`` is its position in the file (line number or annotation
    index), so an image's captions keep the file's order after a shuffle."""
    image_id: str
    caption: str
    order: int


def parse_flickr8k_line(line: str, where: str = "") -> Tuple[str, str]:
    if "\t" not in line:
        raise CaptionFileError(f"{where}: expected '<file>#<n><TAB><caption>', got {line[:80]!r}")
    key, caption = line.split("\t", 1)
    name = key.rsplit("#", 1)[0] if "#" in key else key
    iid = image_id(name)
    if not iid:
        raise CaptionFileError(f"{where}: empty image name in {line[:80]!r}")
    caption = caption.strip()
    if not caption:
        raise CaptionFileError(f"{where}: empty caption for {iid!r}")
    return iid, caption


Row = Union[CaptionRow, CaptionFileError]


def _flickr8k_rows(text: str, source: str) -> Iterator[Row]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            iid, caption = parse_flickr8k_line(line.rstrip("\r\n"), f"{source}:{n}")
        except CaptionFileError as e:
            yield e
            continue
        yield CaptionRow(iid, caption, n)


def _kaggle_rows(text: str, source: str) -> Iterator[Row]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
        raise CaptionFileError(f"{source}:1: expected a CSV header 'image,caption', got {header!r}")
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield CaptionFileError(f"{source}:{reader.line_num}: malformed CSV: {e}")
            continue
        n = reader.line_num
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) < 2 or not row[0].strip():
            yield CaptionFileError(f"{source}:{n}: expected 'image,caption', got {row!r}")
            continue
        caption = ",".join(row[1:]).strip()
        if not caption:
            yield CaptionFileError(f"{source}:{n}: empty caption for {row[0]!r}")
            continue
        yield CaptionRow(image_id(row[0]), caption, n)


def _coco_rows(text: str, source: str) -> Iterator[Row]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CaptionFileError(f"{source}: not valid COCO JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise CaptionFileError(f"{source}: COCO captions JSON needs an 'annotations' list")
    images = data.get("images")
    names: Dict[object, str] = {}
    if isinstance(images, list):
        for k, img in enumerate(images):
            if isinstance(img, dict) and "id" in img:
                names[img["id"]] = image_id(img.get("file_name") or str(img["id"]))
    for k, ann in enumerate(data["annotations"]):
        where = f"{source}: annotations[{k}]"
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            yield CaptionFileError(f"{where}: expected an object with 'image_id' and 'caption'")
            continue
        if names and ann["image_id"] not in names:
            yield CaptionFileError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
            continue
        caption = str(ann["caption"]).strip()
        if not caption:
            yield CaptionFileError(f"{where}: empty caption")
            continue
        yield CaptionRow(names.get(ann["image_id"], str(ann["image_id"])), caption, k)


def _jsonl_rows(text: str, source: str) -> Iterator[Row]:
    order = 0
    for n, line in jsonl.numbered_lines(text):
        where = f"{source}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield CaptionFileError(f"{where}: not a JSON object: {e}")
            continue
        if not isinstance(row, dict) or "image_id" not in row:
            yield CaptionFileError(f"{where}: expected an object with 'image_id'")
            continue
        iid = image_id(str(row["image_id"]))
        if "captions" in row and isinstance(row["captions"], list):
            captions = row["captions"]
        elif "caption" in row:
            captions = [row["caption"]]
        else:
            yield CaptionFileError(f"{where}: expected 'caption' (a string) or 'captions' (a list)")
            continue
        for c in captions:
            c = str(c).strip()
            if not c:
                yield CaptionFileError(f"{where}: empty caption for {iid!r}")
                continue
            order += 1
            yield CaptionRow(iid, c, order)


ROW_PARSERS = {"flickr8k": _flickr8k_rows, "kaggle": _kaggle_rows, "coco": _coco_rows, "jsonl": _jsonl_rows}


def iter_rows(text: str, fmt: str = "auto", source: str = "captions") -> Iterator[Row]:
    """Tolerant parse for pipelines: yields a :class:`CaptionRow` per caption and a
    :class:`CaptionFileError` (not raised) per malformed line, so a job can dead-letter bad lines and
    go on. Errors that spoil the whole file (a bad COCO document, a missing CSV header, an unknown
    format) are raised."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if fmt == "auto":
        fmt = detect_format(source, text[:4096])
    if fmt not in ROW_PARSERS:
        raise CaptionFileError(f"unknown caption format {fmt!r}; choose one of {FORMATS} or 'auto'")
    return _checked_ids(ROW_PARSERS[fmt](text, source), source)


_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]")


def _checked_ids(rows: Iterable[Row], source: str) -> Iterator[Row]:
    """An image id with a line break or another control character (possible in CSV, COCO and JSON lines)
    is a malformed row: it would break every one-id-per-line file (join lists, splits)."""
    for row in rows:
        if isinstance(row, CaptionRow) and _CONTROL.search(row.image_id):
            yield CaptionFileError(f"{source}: image id {row.image_id!r} contains a line break or control "
                                   f"character")
        else:
            yield row


def _strict(rows: Iterable[Row]) -> Iterator[Tuple[str, str]]:
    for row in rows:
        if isinstance(row, CaptionFileError):
            raise row
        yield row.image_id, row.caption


def parse_flickr8k(text: str, source: str = "captions") -> Iterator[Tuple[str, str]]:
    return _strict(_flickr8k_rows(text, source))


def parse_kaggle(text: str, source: str = "captions") -> Iterator[Tuple[str, str]]:
    return _strict(_kaggle_rows(text, source))


def parse_coco(text: str, source: str = "captions") -> Iterator[Tuple[str, str]]:
    return _strict(_coco_rows(text, source))


def parse_jsonl(text: str, source: str = "captions") -> Iterator[Tuple[str, str]]:
    return _strict(_jsonl_rows(text, source))


PARSERS = {"flickr8k": parse_flickr8k, "kaggle": parse_kaggle, "coco": parse_coco, "jsonl": parse_jsonl}


def detect_format(name: str, head: str) -> str:
    """Guess the format from the file name and its first characters."""
    lower = name.lower()
    stripped = head.lstrip("\ufeff \t\r\n")
    if lower.endswith(".jsonl"):
        return "jsonl"
    if stripped.startswith("{"):
        # JSON lines: the first line is a whole object (and not a one-line COCO document).
        try:
            first = json.loads(stripped.split("\n", 1)[0])
        except json.JSONDecodeError:
            return "coco"
        return "coco" if isinstance(first, dict) and "annotations" in first else "jsonl"
    if lower.endswith(".json"):
        return "coco"
    first = stripped.split("\n", 1)[0].lower()
    if first.replace(" ", "").startswith("image,caption"):
        return "kaggle"
    return "flickr8k"


def parse(text: str, fmt: str = "auto", source: str = "captions") -> List[Tuple[str, str]]:
    """Strict parse: (image_id, caption) pairs; the first malformed line raises :class:`CaptionFileError`
    naming the file and line."""
    return list(_strict(iter_rows(text, fmt, source)))


def group(pairs: Iterable[Tuple[str, str]]) -> "OrderedDict[str, List[str]]":
    """(id, caption) pairs -> id -> captions, in first-seen order."""
    out: "OrderedDict[str, List[str]]" = OrderedDict()
    for iid, cap in pairs:
        out.setdefault(iid, []).append(cap)
    return out


def parse_split_file(text: str) -> List[str]:
    """Flickr8k split file (one image file name per line) -> image ids."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return [image_id(line) for line in text.splitlines() if line.strip()]
