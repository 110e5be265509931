"""Hostile inputs for the readers (issue 12 #1, #4, #7, #8), written as real files: sparse oversized
files, a symlink to /dev/zero, a FIFO, dangling and looping symlinks, a directory named like an image, a
``.tar.gz`` with a huge zero member (streamed: no memory or disk for it), non-regular tar members, a tar
cut before its end, a TFRecord with an oversized record and a forged record length.

``write_hostile(root, huge_member_bytes)`` returns a :class:`Hostile` with the globs and what every
input must become: ``records`` (image ids) and ``dead`` ({(path, error)}). Used by the tests and by
``benchmarks/hostile.py``."""
import io
import os
import struct
import tarfile
from dataclasses import dataclass, field
from typing import Dict, List, Set, Tuple

import numpy as np

LIMIT = 1 << 20     # --max-bytes of the tests: 1 MiB


@dataclass
class Hostile:
    globs: List[str]
    records: Set[str] = field(default_factory=set)                 # image ids that must be encoded
    dead: Set[Tuple[str, str]] = field(default_factory=set)         # (path, error) that must be dead letters

    @property
    def inputs(self) -> int:
        return len(self.records) + len(self.dead)


def jpeg(seed: int, size: int = 24) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


class _Zeros(io.RawIOBase):
    """``n`` zero bytes as a stream (tarfile copies it in chunks: nothing that size is held)."""

    def __init__(self, n: int):
        self.left = n

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def _add(tar, name, data=b"", kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _frame(data: bytes, length: int = None) -> bytes:
    from captionbeam.pipelines.shards.tfrecord import masked_crc32c
    head = struct.pack("<Q", len(data) if length is None else length)
    return head + struct.pack("<I", masked_crc32c(head)) + data + struct.pack("<I", masked_crc32c(data))


def write_hostile(root: str, huge_member_bytes: int = 64 << 20, clean_only: bool = False) -> Hostile:
    from captionbeam.pipelines.shards.image_examples import image_example
    loose, shards = os.path.join(root, "loose"), os.path.join(root, "shards")
    os.makedirs(loose), os.makedirs(shards)
    h = Hostile(globs=[os.path.join(loose, "*.jpg"), os.path.join(shards, "*.tar"), os.path.join(shards, "*.tar.gz"),
                       os.path.join(shards, "*.tfrecord")])
    for i in range(3):
        with open(os.path.join(loose, f"good{i}.jpg"), "wb") as f:
            f.write(jpeg(i))
        h.records.add(f"good{i}")

    def dead(path, error):
        h.dead.add((path, error))

    # ---- a tar.gz: good members, a huge zero member, non-regular members, an empty id
    tgz = os.path.join(shards, "hostile.tar.gz")
    with tarfile.open(tgz, "w:gz", compresslevel=1) as tar:
        for i in range(2):
            _add(tar, f"t{i}.jpg", jpeg(10 + i))
            h.records.add(f"t{i}")
        if not clean_only:
            info = tarfile.TarInfo("zero.jpg")
            info.size = huge_member_bytes
            tar.addfile(info, _Zeros(huge_member_bytes))
            dead(f"{tgz}#zero.jpg", "too_large")
            for name, kind, link in (("images", tarfile.DIRTYPE, ""), ("sym.jpg", tarfile.SYMTYPE, "t0.jpg"),
                                     ("hard.jpg", tarfile.LNKTYPE, "t0.jpg"), ("fifo.jpg", tarfile.FIFOTYPE, ""),
                                     ("dev.jpg", tarfile.CHRTYPE, "")):
                _add(tar, name, kind=kind, linkname=link)
                dead(f"{tgz}#{name}", "not_a_regular_file")
            _add(tar, ".jpg", jpeg(19))
            dead(f"{tgz}#.jpg", "empty_id")
    if clean_only:
        h.globs = [os.path.join(loose, "*.jpg"), os.path.join(shards, "*.tar.gz")]   # what exists
        return h

    # ---- loose files that must never be opened or read whole
    with open(os.path.join(loose, "huge.jpg"), "wb") as f:           # 8 GiB, sparse: no disk used
        f.truncate(8 << 30)
    dead(os.path.join(loose, "huge.jpg"), "too_large")
    with open(os.path.join(loose, "big.jpg"), "wb") as f:            # a real file over the limit
        f.write(jpeg(5) + bytes(LIMIT))
    dead(os.path.join(loose, "big.jpg"), "too_large")
    os.symlink("/dev/zero", os.path.join(loose, "zero.jpg"))
    dead(os.path.join(loose, "zero.jpg"), "not_a_regular_file")
    os.mkfifo(os.path.join(loose, "fifo.jpg"))
    dead(os.path.join(loose, "fifo.jpg"), "not_a_regular_file")
    os.symlink(os.path.join(root, "gone.jpg"), os.path.join(loose, "dangling.jpg"))
    dead(os.path.join(loose, "dangling.jpg"), "broken_link")
    os.symlink("loop2.jpg", os.path.join(loose, "loop1.jpg"))
    os.symlink("loop1.jpg", os.path.join(loose, "loop2.jpg"))
    dead(os.path.join(loose, "loop1.jpg"), "symlink_loop")
    dead(os.path.join(loose, "loop2.jpg"), "symlink_loop")
    os.mkdir(os.path.join(loose, "folder.jpg"))
    dead(os.path.join(loose, "folder.jpg"), "not_a_regular_file")
    with open(os.path.join(loose, ".jpg"), "wb") as f:
        f.write(jpeg(6))
    dead(os.path.join(loose, ".jpg"), "empty_id")

    # ---- a tar cut at a header boundary after 3 of 5 members, and one cut inside a header
    for name, cut_inside in (("cut.tar", False), ("cuthead.tar", True)):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            ends = []
            for i in range(5):
                _add(tar, f"{name[:-4]}{i}.jpg", jpeg(30 + i))
                ends.append(buf.tell())
        data = buf.getvalue()[: ends[2] + (100 if cut_inside else 0)]
        path = os.path.join(shards, name)
        with open(path, "wb") as f:
            f.write(data)
        h.records.update(f"{name[:-4]}{i}" for i in range(3))
        dead(f"{path}#{name[:-4]}2.jpg..", "truncated_shard")

    # ---- a TFRecord: good, oversized (skipped), good, then a forged length with a valid CRC
    rec = os.path.join(shards, "forged.tfrecord")
    with open(rec, "wb") as f:
        f.write(_frame(image_example("r0", jpeg(40))))
        f.write(_frame(image_example("r1", jpeg(41) + bytes(LIMIT))))
        f.write(_frame(image_example("r2", jpeg(42))))
        f.write(_frame(b"x" * 100, length=1 << 40))
    h.records.update({"r0", "r2"})
    dead(f"{rec}#record-1", "too_large")
    dead(f"{rec}#record-3..", "corrupt_record")
    return h


def png_bomb(width: int = 9500, height: int = 9500) -> bytes:
    """A greyscale PNG of ``width`` x ``height`` zeros (9500 x 9500 = 90.25 Mpx, over the default pixel
    limit) in about 90 KB: decoding it would take hundreds of MB; its IHDR tells its size in 24 bytes."""
    import zlib
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data          # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    comp, row, parts = zlib.compressobj(9), bytes(1 + width), []
    for _ in range(height):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
