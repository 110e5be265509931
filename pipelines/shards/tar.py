"""Stream a WebDataset-layout tar (plain or gzip) as :class:`ShardRecord` / :class:`ShardError` items,
holding one sample (the members sharing a key) at a time."""
from __future__ import annotations

import json
import posixpath
import tarfile
from typing import BinaryIO, Dict, Iterator, List, Optional, Tuple

from captionbeam.pipelines.formats import IMAGE_EXTENSIONS
from captionbeam.pipelines.image_items import (BAD_RECORD, CORRUPT_STREAM_ERRORS, DEFAULT_MAX_BYTES, EMPTY_ID, MISSING_IMAGE,
                                   NOT_AN_IMAGE, NOT_REGULAR, TOO_LARGE, TRUNCATED, UNREADABLE, ShardError,
                                   ShardItem, ShardRecord)
from captionbeam.pipelines.io import image_id_from_path

TEXT_EXTENSIONS = (".txt",)
META_EXTENSIONS = (".json",)


def image_id_for_member(name: str) -> str:
    """Image id of a tar member: its basename without the image extension, like a loose file's
    (``dir/1000268201_693b08cb0e.jpg`` -> ``1000268201_693b08cb0e``; ``x.2019.jpg`` -> ``x.2019``)."""
    return image_id_from_path(name)


def _key_and_ext(name: str) -> Tuple[str, str]:
    """WebDataset grouping: key = path up to the first dot of the basename, ext = the rest (lowercased)."""
    d, base = posixpath.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return posixpath.join(d, stem), "." + ext.lower()


def _member_kind(ext: str) -> str:
    """A member's kind from its last suffix (``.seg.png`` is an image, ``.cls.txt`` a text)."""
    last = "." + ext.rsplit(".", 1)[-1] if ext else ""
    if last in IMAGE_EXTENSIONS:
        return "image"
    if last in TEXT_EXTENSIONS:
        return "text"
    if last in META_EXTENSIONS:
        return "meta"
    return "other"


def _stem(name: str) -> str:
    """Member name without its last suffix: ``dir/x.2019.jpg`` -> ``dir/x.2019``."""
    return name.rsplit(".", 1)[0] if "." in posixpath.basename(name) else name


def _group_items(shard: str, key: str, members: Dict[str, Tuple[str, bytes]]) -> Iterator[ShardItem]:
    """One WebDataset sample (members sharing a key) -> a record per image member, or errors.

    Every image member is its own image (id: its basename without the image extension, as for a
    loose file), so nothing in the shard goes unaccounted. Captions come from ``<stem>.txt`` (the
    image's own stem) or else the sample's ``<key>.txt``, one caption per line; metadata likewise from
    ``.json`` (whose ``captions`` / ``caption`` are used when there is no text member)."""
    texts: Dict[str, List[str]] = {}
    metas: Dict[str, object] = {}
    images = []
    for ext, (name, data) in sorted(members.items()):
        kind = _member_kind(ext)
        if kind == "image":
            images.append((name, data))
        elif kind == "text":
            text = data.decode("utf-8", errors="replace")
            texts[_stem(name)] = [line.strip() for line in text.splitlines() if line.strip()]
        elif kind == "meta":
            try:
                metas[_stem(name)] = json.loads(data.decode("utf-8"))
            except ValueError as e:
                yield ShardError(shard, name, BAD_RECORD, f"metadata member is not JSON: {e}")
        else:
            yield ShardError(shard, name, NOT_AN_IMAGE,
                             f"member extension {ext or '(none)'!r} is not an image "
                             f"({', '.join(IMAGE_EXTENSIONS)}) nor a caption / metadata member (.txt, .json)")
    if not images:
        present = sorted(n for n, _ in members.values() if _member_kind(_key_and_ext(n)[1]) in ("text", "meta"))
        if present:
            yield ShardError(shard, present[0], MISSING_IMAGE,
                             f"sample {key!r} has {', '.join(present)} but no image member")
        return
    for name, data in images:
        if not image_id_for_member(name):
            yield ShardError(shard, name, EMPTY_ID, f"member {name!r} has no name before its extension: no image id")
            continue
        stem = _stem(name)
        captions = texts.get(stem, texts.get(key))
        metadata = metas.get(stem, metas.get(key))
        if captions is None and isinstance(metadata, dict):
            caps = metadata.get("captions") or metadata.get("caption") or []
            captions = [caps] if isinstance(caps, str) else [str(c) for c in caps]
        yield ShardRecord(shard, name, image_id_for_member(name), data, list(captions or []),
                          metadata if isinstance(metadata, dict) else None)


class _TarInfo(tarfile.TarInfo):
    """Records on the archive why header reading stopped: tarfile's stream iteration ends silently on a
    missing, truncated or garbage header, which :func:`iter_tar` must tell from the end-of-archive
    marker (a block of zeros)."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as e:
            tar.captionbeam_stop = e
            raise


def _member_type(info: tarfile.TarInfo) -> str:
    return ("a directory" if info.isdir() else "a symlink" if info.issym() else "a hard link" if info.islnk()
            else "a FIFO" if info.isfifo() else "a character device" if info.ischr()
            else "a block device" if info.isblk() else f"of type {info.type!r}")


def _end_problem(tar: tarfile.TarFile) -> Optional[Tuple[str, str]]:
    """None when the archive ended at its end-of-archive marker; else (error, why)."""
    stop = getattr(tar, "captionbeam_stop", None)
    if stop is None or isinstance(stop, tarfile.EOFHeaderError):
        return None
    if isinstance(stop, (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)):
        return TRUNCATED, "the archive ends before its end-of-archive marker (cut at or inside a header)"
    return UNREADABLE, f"a member header is garbage ({type(stop).__name__}: {stop})"


def iter_tar(fileobj: BinaryIO, shard: str, max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[ShardItem]:
    """Stream a WebDataset-layout tar (plain or gzip, detected from the bytes) member by member.

    Members sharing a key (``dir/key.jpg``, ``dir/key.txt``, ``dir/key.json``; the key is the path
    up to the first dot of the basename, as in WebDataset) are consecutive in WebDataset tars and are
    grouped as they arrive (a key split over non-consecutive runs only loses the caption pairing); only the current group is held in memory. A
    truncated or corrupt archive yields the samples read so far, then one :class:`ShardError` for the
    unreadable rest (naming the member being read when it broke); an archive that ends without its
    end-of-archive marker is ``truncated_shard`` too. Every member is accounted for: a member that is
    not a regular file (directory, link, device, FIFO) or is larger than ``max_bytes`` (skipped, never
    read) is a dead letter of its own."""
    key: Optional[str] = None
    group: Dict[str, Tuple[str, bytes]] = {}
    last_ok, reading = None, None
    count = 0
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*", tarinfo=_TarInfo) as tar:
            for info in tar:
                if not info.isfile():
                    yield ShardError(shard, info.name, NOT_REGULAR,
                                     f"tar member is {_member_type(info)}, not a regular file")
                    continue
                if info.size > max_bytes:
                    yield ShardError(shard, info.name, TOO_LARGE,
                                     f"tar member has {info.size} bytes, more than --max-bytes {max_bytes} (skipped)")
                    continue
                reading = info.name
                k, ext = _key_and_ext(info.name)
                if key is not None and k != key:
                    yield from _group_items(shard, key, group)
                    group = {}
                key = k
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
                if len(data) != info.size:
                    raise EOFError(f"member {info.name!r} has {len(data)} of {info.size} bytes")
                reading, last_ok = None, info.name
                if ext in group:
                    yield ShardError(shard, info.name, BAD_RECORD, f"duplicate member name in sample {key!r}")
                    continue
                group[ext] = (info.name, data)
                count += 1
    except CORRUPT_STREAM_ERRORS as e:  # storage errors are not caught: Beam retries the shard
        if group:  # only fully read members are in the group
            yield from _group_items(shard, key, group)
        err = TRUNCATED if isinstance(e, EOFError) or "unexpected end" in str(e).lower() else UNREADABLE
        where = (f"while reading member {reading!r}" if reading else
                 f"after member {last_ok!r}" if last_ok else "at its start")
        yield ShardError(shard, f"{reading or last_ok or ''}..", err,
                         f"archive unreadable {where} ({count} members read before): {type(e).__name__}: {e}")
        return
    if group:
        yield from _group_items(shard, key, group)
    problem = _end_problem(tar)
    if problem:
        yield ShardError(shard, f"{last_ok or ''}..", problem[0],
                         f"{problem[1]}; {count} members read before{f', the last {last_ok!r}' if last_ok else ''}")
