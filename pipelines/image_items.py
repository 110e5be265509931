"""What the image readers yield: :class:`ImageBlob` (one image's raw bytes, from a loose file or a
shard), and the shard readers' :class:`ShardRecord` / :class:`ShardError` with their error codes.

Plain data (no Beam, no TensorFlow; NumPy for pixels), shared by :mod:`pipelines.sources`, :mod:`pipelines.shards` and
the jobs that consume images.
"""
from __future__ import annotations

import gzip
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import List, Optional, Union

import numpy as np

STAGE = "shard"  # dead-letter stage of everything the shard readers report

# Dead-letter error codes of the shard readers
TRUNCATED = "truncated_shard"
BAD_CRC = "bad_crc"
UNREADABLE = "unreadable_shard"
NOT_AN_IMAGE = "not_an_image"
MISSING_IMAGE = "missing_image"
MISSING_ID = "missing_id"
BAD_RECORD = "bad_record"
DUPLICATE_ID = "duplicate_id"
UNKNOWN_FORMAT = "unknown_format"
TOO_LARGE = "too_large"                    # a file, tar member or TFRecord record over the byte limit
CORRUPT_RECORD = "corrupt_record"          # a TFRecord length that runs past the end of the shard
NOT_REGULAR = "not_a_regular_file"         # FIFO, socket, device, directory, tar link / device member
BROKEN_LINK = "broken_link"                # a symlink whose target does not exist
SYMLINK_LOOP = "symlink_loop"              # a symlink that resolves to itself
EMPTY_ID = "empty_id"                      # a member named ``.jpg``: no image id
CHANGED_SINCE_HASHED = "changed_since_hashed"  # bulk: a member gone from its shard when read again to caption it

# One byte limit for every reader (loose files, tar members, TFRecord records): bytes are never read
# past it, so a worker holds at most this much per image in flight. ``--max-bytes`` overrides it.
DEFAULT_MAX_BYTES = 64 << 20

# What a corrupt archive / compressed stream raises (dead-lettered). Anything else -- a storage or
# network error -- propagates, so the runner retries the shard instead of dead-lettering good data.
CORRUPT_STREAM_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


@dataclass(frozen=True)
class ImageBlob:
    """One image's raw bytes as read from storage."""
    source: str  # the file path, or "shard#member" for images inside a tar / TFRecord shard
    image_id: str  # Flickr8k convention: file (or member) name without extension
    data: bytes


@dataclass
class ShardRecord:
    """One image read from a shard, with the captions / metadata the shard carries for it."""
    shard: str
    member: str
    image_id: str
    data: bytes
    captions: List[str] = field(default_factory=list)
    metadata: Optional[dict] = None

    @property
    def source(self) -> str:
        return f"{self.shard}#{self.member}"

    def to_blob(self) -> ImageBlob:
        return ImageBlob(self.source, self.image_id, self.data)


@dataclass
class ShardError:
    """Something in a shard that could not be read; ``member`` may be a range ("rest of shard")."""
    shard: str
    member: str
    error: str
    message: str

    @property
    def source(self) -> str:
        return f"{self.shard}#{self.member}"


ShardItem = Union[ShardRecord, ShardError]


@dataclass(frozen=True)
class DecodedImage:
    """One decoded image on its way to a model: ``pixels`` are uint8 HxWx3 RGB at the encoder's size."""
    path: str  # the blob's source
    image_id: str
    sha256: str  # of the file's bytes
    pixels: np.ndarray
