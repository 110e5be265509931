"""JSON lines, written and read one way everywhere: one JSON value per line, UTF-8 (``ensure_ascii``
off), blank lines skipped on reading, and the Unicode line separators that ``str.splitlines()`` splits
on escaped inside strings (``\\u2028`` ...: the same values, still one record per line). Text in, text
out: callers read and write files with their own layer (``tf.io.gfile``, ``pipelines.io``)."""
from __future__ import annotations

import json
from typing import Any, Iterable, Iterator, List, Tuple

# JSON allows these raw inside strings, but str.splitlines() (used by line-based parsers) splits on
# them; as JSON escapes they mean the same string and keep one record per line.
_JSON_SAFE = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


def protect(text: str) -> str:
    """JSON-lines text with Unicode line separators inside strings escaped (same values, one record per line)."""
    return text.translate(_JSON_SAFE)


def dumps_line(obj: Any, sort_keys: bool = False) -> str:
    """One record as one line (no newline)."""
    return protect(json.dumps(obj, ensure_ascii=False, sort_keys=sort_keys))


def dumps(objs: Iterable[Any], sort_keys: bool = False) -> str:
    """Records -> JSON-lines text, a newline after each."""
    return "".join(dumps_line(o, sort_keys) + "\n" for o in objs)


def numbered_lines(text: str) -> Iterator[Tuple[int, str]]:
    """``(line number, line)`` of every non-blank line (for parsers that report errors per line)."""
    for n, line in enumerate(protect(text).splitlines(), 1):
        if line.strip():
            yield n, line


def loads(text: str, source: str = "JSON lines") -> List[Any]:
    """JSON-lines text -> its records; a line that is not JSON raises ValueError naming ``source:line``."""
    out = []
    for n, line in numbered_lines(text):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}:{n}: not JSON: {e}") from None
    return out
