"""Write image shards (used by ``captionbeam pack``): a WebDataset tar or a TFRecord file, optionally gzip'd."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from typing import BinaryIO, Optional, Sequence

from captionbeam.pipelines.formats import SHARD_FORMATS
from captionbeam.pipelines.shards.image_examples import image_example
from captionbeam.pipelines.shards.tfrecord import frame_record


class ShardWriter:
    """Streams samples into one shard (``tar`` in WebDataset layout, or ``tfrecord``) on a binary
    file object; with ``compress`` the stream is gzip'd. Nothing but the current sample is held."""

    def __init__(self, fileobj: BinaryIO, fmt: str, compress: bool = False):
        if fmt not in SHARD_FORMATS:
            raise ValueError(f"shard format must be tar or tfrecord, got {fmt!r}")
        self.fmt = fmt
        self._raw = fileobj
        self._gz = None
        self._tar = None
        if fmt == "tar":
            self._tar = tarfile.open(fileobj=fileobj, mode="w|gz" if compress else "w|", format=tarfile.PAX_FORMAT)
        elif compress:
            self._gz = gzip.GzipFile(fileobj=fileobj, mode="wb", mtime=0)

    def _add_member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, image_id: str, data: bytes, ext: str, captions: Sequence[str] = (),
              metadata: Optional[dict] = None) -> str:
        """Add one image; returns its member name (tar) or id (tfrecord)."""
        ext = ext.lower() if ext.startswith(".") else "." + ext.lower()
        if self.fmt == "tar":
            member = f"{image_id}{ext}"
            self._add_member(member, data)
            if captions:
                self._add_member(f"{image_id}.txt", ("\n".join(captions) + "\n").encode("utf-8"))
            if metadata:
                self._add_member(f"{image_id}.json", json.dumps(metadata, sort_keys=True).encode("utf-8"))
            return member
        md = metadata or {}
        record = image_example(image_id, data, filename=md.get("filename", ""), captions=captions,
                               sha256=md.get("sha256", ""), image_format=ext.lstrip("."))
        (self._gz or self._raw).write(frame_record(record))
        return image_id

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
        if self._gz is not None:
            self._gz.close()
