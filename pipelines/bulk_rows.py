"""The bulk job's output row: one captioned image, as written to ``captions-<run>-*.jsonl`` / ``.parquet``."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict

from captionbeam.model import jsonl


@dataclass(frozen=True)
class CaptionRow:
    path: str            # the image's source (file path, or shard#member)
    image_id: str
    sha256: str          # of the image file's bytes
    caption: str
    log_prob: float
    model_version: str
    encoder: str

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return jsonl.dumps_line(self.to_dict())

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CaptionRow":
        return cls(**{k: d[k] for k in ROW_FIELDS})

    @classmethod
    def from_json(cls, line: str) -> "CaptionRow":
        return cls.from_dict(json.loads(line))


ROW_FIELDS = tuple(f.name for f in fields(CaptionRow))


def parquet_schema():
    import pyarrow as pa
    return pa.schema([
        ("path", pa.string()), ("image_id", pa.string()), ("sha256", pa.string()), ("caption", pa.string()),
        ("log_prob", pa.float64()), ("model_version", pa.string()), ("encoder", pa.string()),
    ])
