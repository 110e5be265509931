"""What a user reads of a Beam job's progress (pipelines/progress.py), checked the same way on every runner.

- ``progress_messages()``: a context manager collecting the ``captionbeam.progress`` logger's messages of
  an in-process command (at INFO whatever its ``--log-level``; the logger's level is restored after);
- ``progress_messages_in(stderr)``: the same messages read from a ``captionbeam`` process's stderr;
- ``assert_progress_lines(messages, job, total)``: the total first, then done/total (percent), rate and
  ETA lines, counts never going down, the last one total/total (100%), a rate above 0 and ETA 0:00:00;
  ``listed=False`` (input in shards, total unknown up front): done and rate lines, the last one ``total``.
"""
import contextlib
import logging
import re
from typing import Iterator, List

LOGGER = "captionbeam.progress"


@contextlib.contextmanager
def progress_messages() -> Iterator[List[str]]:
    messages: List[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger = logging.getLogger(LOGGER)
    handler, level = Collect(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def progress_messages_in(stderr: str) -> List[str]:
    return [line.split(f"{LOGGER}: ", 1)[1] for line in stderr.splitlines() if f"{LOGGER}: " in line]


def assert_progress_lines(messages: List[str], job: str, total: int, unit: str = "images", listed: bool = True) -> None:
    """``listed=False``: a job whose total is not known before it reads its input (tar or TFRecord shards):
    no total line, ``done`` and rate lines, the last one ``total``."""
    if not listed:
        unlisted = re.compile(rf"^{job}: ([\d,]+) {unit}, ([\d.,]+) {unit}/s$")
        done = [unlisted.match(m) for m in messages]
        assert done and all(done), messages
        counts = [int(m.group(1).replace(",", "")) for m in done]
        assert counts == sorted(counts) and counts[-1] == total, messages
        assert float(done[-1].group(2).replace(",", "")) > 0, messages
        return
    line = re.compile(rf"^{job}: ([\d,]+)/([\d,]+) {unit} \((\d+)%\), ([\d.,]+) {unit}/s, ETA (\S+)$")
    assert messages and messages[0] == f"{job}: {total:,} {unit} to process", messages
    done = [line.match(m) for m in messages[1:]]
    assert done and all(done), messages
    counts = [int(m.group(1).replace(",", "")) for m in done]
    assert counts == sorted(counts) and {int(m.group(2).replace(",", "")) for m in done} == {total}, messages
    assert (counts[-1], done[-1].group(3)) == (total, "100"), messages
    assert float(done[-1].group(4).replace(",", "")) > 0 and done[-1].group(5) == "0:00:00", messages
