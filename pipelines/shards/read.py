"""Any image shard (local or ``gs://``, through Beam's ``FileSystems``) -> a stream of
:class:`~pipelines.image_items.ShardItem`, by format: :mod:`.tar` or :mod:`.image_examples`."""
from __future__ import annotations

import gzip
import io
from typing import BinaryIO, Iterator, List, Optional

from captionbeam.pipelines.formats import is_gzip_name
from captionbeam.pipelines.image_items import DEFAULT_MAX_BYTES, UNKNOWN_FORMAT, UNREADABLE, ShardError, ShardItem
from captionbeam.pipelines.shards.image_examples import TfrecordFields, iter_tfrecord
from captionbeam.pipelines.shards.tar import iter_tar
from captionbeam.pipelines.user_files import UserFileError, open_user_file


def open_shard(path: str) -> BinaryIO:
    """A streaming binary file object over a shard (local or gs://), compressed bytes as stored, through
    the one reader of users' files (a FIFO, device or dangling link is a ``UserFileError``)."""
    return open_user_file(path)


def iter_shard(path: str, fmt: str, fields: TfrecordFields = TfrecordFields(),
               fileobj: Optional[BinaryIO] = None, max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[ShardItem]:
    """Every item of one shard, streamed; ``fmt`` is ``tar`` or ``tfrecord``. No member or record over
    ``max_bytes`` is read into memory (each is a ``too_large`` dead letter)."""
    try:
        f = fileobj if fileobj is not None else open_shard(path)
    except UserFileError as e:
        yield ShardError(path, "", e.error, e.message)
        return
    except Exception as e:  # noqa: BLE001
        yield ShardError(path, "", UNREADABLE, f"cannot open shard: {type(e).__name__}: {e}")
        return
    try:
        if fmt == "tar":
            yield from iter_tar(f, path, max_bytes)  # tarfile detects gzip itself ("r|*")
        elif fmt == "tfrecord":
            stream = gzip.GzipFile(fileobj=f, mode="rb") if is_gzip_name(path) else f
            yield from iter_tfrecord(stream, path, fields, max_bytes)
        else:
            yield ShardError(path, "", UNKNOWN_FORMAT, f"not a shard format: {fmt!r} (tar or tfrecord)")
    finally:
        if fileobj is None:
            f.close()


def read_shard_bytes(data: bytes, path: str, fmt: str, fields: TfrecordFields = TfrecordFields()) -> List[ShardItem]:
    """Convenience for tests and small shards already in memory."""
    return list(iter_shard(path, fmt, fields, fileobj=io.BytesIO(data)))
