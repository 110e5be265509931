"""Predictions and references for scoring: loading, validation and the alignment policy. Pure Python.

Files
-----
- predictions: JSON lines ``{"image_id": ..., "caption": ...}`` (extra keys ignored); one line per
  image. The id goes through ``caption_files.image_id`` (``x.jpg`` and ``x`` are the same image).
- references: any ``model.caption_files`` format (Flickr8k token file, Kaggle ``captions.txt``,
  COCO captions JSON, JSON lines with ``captions``), ``auto`` detects it.

Policy (``docs/evaluation.md``)
------------------------------
- Text is UTF-8 (a BOM is tolerated); invalid bytes or lone surrogates are an error naming the file
  and line. Unicode text is otherwise kept as given (BLEU lowercases; the PTB tokenizer lowercases).
- A prediction that is empty or only whitespace is scored as an empty hypothesis (it earns nothing and
  pays the brevity penalty); it is counted in ``Alignment.empty_predictions``. A ``null`` or
  non-string caption, or the same image predicted twice, is an error.
- Reference captions that are empty are dropped (counted); an image left without references has none.
- Ids present on one side only: an error naming the counts and a few examples, unless
  ``allow_missing`` (then the intersection is scored and the counts are reported). ``image_ids``
  (a split file) first restricts both sides to that set, so a full Flickr8k token file can score a
  test split's predictions.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from captionbeam.model import caption_files, jsonl
from captionbeam.model.caption_files import CaptionFileError

EXAMPLES = 5


class MissingIdsError(ValueError):
    """Predictions and references do not cover the same images."""


def read_text(path: str) -> str:
    """A whole UTF-8 text file (local, or ``gs://`` through ``tf.io.gfile``), with a clear error on bad bytes."""
    if "://" in path:
        import tensorflow as tf
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"file not found: {path}")
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    else:
        with open(path, "rb") as f:
            data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CaptionFileError(f"{path}:{line}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}); "
                               f"convert the file to UTF-8") from None


def _check_encodable(text: str, where: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CaptionFileError(f"{where}: caption holds a lone surrogate (invalid unicode): {text[:60]!r}") from None
    return text


def parse_predictions(text: str, source: str = "predictions") -> "OrderedDict[str, str]":
    """Predictions JSON lines -> ``image_id -> caption`` in file order."""
    out: "OrderedDict[str, str]" = OrderedDict()
    first_line: Dict[str, int] = {}
    for n, line in jsonl.numbered_lines(text):
        where = f"{source}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CaptionFileError(f"{where}: not a JSON object: {e}") from None
        if not isinstance(row, dict) or "image_id" not in row or "caption" not in row:
            raise CaptionFileError(f"{where}: expected {{\"image_id\": ..., \"caption\": ...}}, got {line[:80]!r}")
        caption = row["caption"]
        if not isinstance(caption, str):
            raise CaptionFileError(f"{where}: 'caption' must be a string, got {type(caption).__name__}")
        iid = caption_files.image_id(str(row["image_id"]))
        if iid in out:
            raise CaptionFileError(f"{where}: image {iid!r} predicted twice (first at line {first_line[iid]}); "
                                   f"keep one caption per image")
        first_line[iid] = n
        out[iid] = _check_encodable(caption, where)
    return out


def load_predictions(path: str) -> "OrderedDict[str, str]":
    return parse_predictions(read_text(path), source=path)


@dataclass
class References:
    captions: "OrderedDict[str, List[str]]"
    dropped_empty: int = 0

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.captions.values())


def build_references(pairs: Iterable, source: str = "references") -> References:
    grouped: "OrderedDict[str, List[str]]" = OrderedDict()
    dropped = 0
    for iid, cap in pairs:
        _check_encodable(cap, f"{source}: image {iid!r}")
        if not cap.strip():
            dropped += 1
            continue
        grouped.setdefault(iid, []).append(cap)
    return References(grouped, dropped)


def load_references(path: str, fmt: str = "auto") -> References:
    text = read_text(path)
    if fmt == "jsonl" or (fmt == "auto" and caption_files.detect_format(path, text[:4096]) == "jsonl"):
        text = jsonl.protect(text)
    return build_references(caption_files.parse(text, fmt=fmt, source=path), source=path)


def load_image_ids(path: str) -> List[str]:
    """A split file (one image file name or id per line, e.g. ``Flickr_8k.testImages.txt``)."""
    ids = caption_files.parse_split_file(read_text(path))
    if not ids:
        raise CaptionFileError(f"{path}: no image ids")
    return ids


@dataclass
class Alignment:
    """What gets scored: the same ids on both sides, in prediction order."""
    ids: List[str]
    predictions: "OrderedDict[str, str]"
    references: "OrderedDict[str, List[str]]"
    missing_references: List[str] = field(default_factory=list)   # predicted, no references
    missing_predictions: List[str] = field(default_factory=list)  # referenced, not predicted
    outside_image_ids: int = 0                                     # predictions dropped by image_ids
    empty_predictions: int = 0

    def summary(self) -> Dict[str, int]:
        return {
            "images": len(self.ids),
            "reference_captions": sum(len(self.references[i]) for i in self.ids),
            "empty_predictions": self.empty_predictions,
            "missing_references": len(self.missing_references),
            "missing_predictions": len(self.missing_predictions),
            "outside_image_ids": self.outside_image_ids,
        }


def _examples(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:EXAMPLES])
    return shown + (", ..." if len(ids) > EXAMPLES else "")


def align(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
          allow_missing: bool = False, image_ids: Optional[Sequence[str]] = None) -> Alignment:
    outside = 0
    if image_ids is not None:
        keep = set(image_ids)
        outside = sum(1 for i in predictions if i not in keep)
        predictions = OrderedDict((i, c) for i, c in predictions.items() if i in keep)
        references = OrderedDict((i, r) for i, r in references.items() if i in keep)
    if not predictions:
        raise MissingIdsError("no predictions to score" + (" inside --image-ids" if image_ids is not None else ""))
    missing_refs = [i for i in predictions if i not in references]
    missing_preds = [i for i in references if i not in predictions]
    if (missing_refs or missing_preds) and not allow_missing:
        parts = []
        if missing_refs:
            parts.append(f"{len(missing_refs)} of {len(predictions)} predicted images have no reference captions "
                         f"({_examples(missing_refs)})")
        if missing_preds:
            parts.append(f"{len(missing_preds)} of {len(references)} referenced images have no prediction "
                         f"({_examples(missing_preds)})")
        raise MissingIdsError("; ".join(parts) + ". Pass --allow-missing to score the images on both sides, or "
                              "--image-ids SPLIT_FILE to restrict the references to a split.")
    ids = [i for i in predictions if i in references]
    if not ids:
        raise MissingIdsError(f"no image is on both sides: predictions {_examples(list(predictions))}, "
                              f"references {_examples(list(references))}")
    preds = OrderedDict((i, predictions[i]) for i in ids)
    refs = OrderedDict((i, list(references[i])) for i in ids)
    return Alignment(ids=ids, predictions=preds, references=refs, missing_references=missing_refs,
                     missing_predictions=missing_preds, outside_image_ids=outside,
                     empty_predictions=sum(1 for c in preds.values() if not c.strip()))
