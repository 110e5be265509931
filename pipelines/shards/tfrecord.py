"""TFRecord framing, as TensorFlow writes it: ``length, masked CRC32C(length), data, masked CRC32C(data)``.

Pure Python over a binary file object (plus ``google-crc32c``, the C implementation Google's storage
client uses too), so a shard streams through a Beam worker without TensorFlow's file layer.
"""
from __future__ import annotations

import struct
from typing import BinaryIO, Iterator, Optional, Tuple

import google_crc32c


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of ``data``."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One TFRecord frame: length, masked CRC of the length, data, masked CRC of the data."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


class TfrecordCorrupt(Exception):
    """The framing of a TFRecord file is broken: the rest of the file cannot be read."""


class RecordLengthPastEnd(TfrecordCorrupt):
    """A record's length (with a valid CRC) runs past the end of the shard: forged or corrupt."""


_SKIP_CHUNK = 1 << 20


def _skip(f: BinaryIO, n: int) -> int:
    """Read and drop ``n`` bytes in bounded chunks; returns how many there were."""
    done = 0
    while done < n:
        chunk = f.read(min(_SKIP_CHUNK, n - done))
        if not chunk:
            break
        done += len(chunk)
    return done


def _read_exact(f: BinaryIO, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = f.read(n)
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def iter_tfrecord_frames(fileobj: BinaryIO, verify: bool = True, max_bytes: Optional[int] = None
                         ) -> Iterator[Tuple[int, int, Optional[bytes], str]]:
    """Stream TFRecord frames: ``(index, offset, data, problem)``.

    ``data`` is None with ``problem`` set when a record's data CRC fails, or (``problem`` starting with
    ``too_large``) when its length is over ``max_bytes``: such a record is skipped in bounded chunks,
    never allocated, and reading goes on. A bad length CRC or a truncated frame raises
    :class:`TfrecordCorrupt` (:class:`RecordLengthPastEnd` for a length that runs past the end of the
    file: a forged length): without a trustworthy length the rest of the file cannot be framed."""
    index, offset = 0, 0
    while True:
        header = _read_exact(fileobj, 12)
        if not header:
            return
        if len(header) < 12:
            raise TfrecordCorrupt(f"truncated record header at byte {offset} (record {index})")
        length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
        if verify and masked_crc32c(length_bytes) != length_crc:
            raise TfrecordCorrupt(f"bad length CRC at byte {offset} (record {index})")
        (length,) = struct.unpack("<Q", length_bytes)
        if max_bytes is not None and length > max_bytes:
            skipped = _skip(fileobj, length + 4)
            if skipped < length + 4:
                raise RecordLengthPastEnd(f"record {index} at byte {offset} claims {length} bytes but the shard "
                                          f"ends {skipped} bytes later (a forged or corrupt length)")
            yield index, offset, None, f"too_large: record {index} at byte {offset} has {length} bytes, more " \
                                       f"than --max-bytes {max_bytes} (skipped)"
            offset += 12 + length + 4
            index += 1
            continue
        body = _read_exact(fileobj, length + 4)
        if len(body) < length + 4:
            raise TfrecordCorrupt(f"truncated record at byte {offset} (record {index}: {len(body)} of "
                                  f"{length + 4} bytes)")
        data, data_crc = body[:length], struct.unpack("<I", body[length:])[0]
        if verify and masked_crc32c(data) != data_crc:
            yield index, offset, None, f"bad data CRC at byte {offset} (record {index})"
        else:
            yield index, offset, data, ""
        offset += 12 + length + 4
        index += 1
