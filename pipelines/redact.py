"""No secrets at rest or in logs: the one redaction of credentials in command lines, pipeline options
and run records, and owner-only writing of records.

A flag or key is secret when one of its words (split on ``-``, ``_`` and ``.``) is ``key``, ``secret``,
``token``, ``password``, ``passwd``, ``credential(s)`` or ends in ``key`` / ``secret`` / ``password``
(``--s3_secret_access_key``, ``--s3_access_key_id``, ``--hdfs_password``, ``--api-token``; not
``--max-tokens`` or ``--keep-empty``). Its value becomes :data:`REDACTED`, in both ``--flag=value`` and
``--flag value`` forms, in a mapping at any depth, and inside strings holding a command line."""
from __future__ import annotations

import os
import re
import shlex
from typing import Any, List, Mapping, Sequence

REDACTED = "<redacted>"
_WORDS = {"key", "secret", "token", "password", "passwd", "credential", "credentials", "pwd"}
_ENDINGS = ("key", "secret", "password")


def is_secret_name(name: str) -> bool:
    """True for an option / key name that carries a credential (see the module doc)."""
    words = [w for w in re.split(r"[-_.\s]+", name.lstrip("-").lower()) if w]
    return any(w in _WORDS or w.endswith(_ENDINGS) for w in words)


def redact_args(argv: Sequence[str]) -> List[str]:
    """A command line with the values of secret flags replaced by :data:`REDACTED`."""
    out: List[str] = []
    hide_next = False
    for tok in argv:
        tok = str(tok)
        if hide_next and not tok.startswith("--"):
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        if tok.startswith("-") and "=" in tok and is_secret_name(tok.split("=", 1)[0]):
            out.append(tok.split("=", 1)[0] + "=" + REDACTED)
        elif tok.startswith("--") and is_secret_name(tok):
            out.append(tok)
            hide_next = True
        else:
            out.append(tok)
    return out


def redact_line(line: str) -> str:
    """A printed command line (``shlex`` quoted) with secret values redacted."""
    try:
        return shlex.join(redact_args(shlex.split(line)))
    except ValueError:                       # unbalanced quotes: redact token by token on whitespace
        return " ".join(redact_args(line.split()))


def redact(value: Any) -> Any:
    """Mappings (secret keys' values), lists of flags and nested structures, redacted; anything else as is."""
    if isinstance(value, Mapping):
        return {k: (REDACTED if is_secret_name(str(k)) and v not in (None, "", False) else redact(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return redact_args(value)
        return [redact(v) for v in value]
    return value


def write_private_text(path: str, text: str) -> None:
    """Write a record readable by its owner only (0600) where the file system has permissions (local
    paths: created 0600, then renamed into place, never readable by others even briefly); ``gs://``
    objects as they are (access is the bucket's IAM)."""
    from captionbeam.pipelines import io as pio
    if pio.is_gcs(path):
        pio.write_text(path, text)
        return
    from captionbeam.model.gfile import commit_path       # the one commit mechanism
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with commit_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)


def write_record(path: str, obj: Any) -> None:
    """A run record as JSON: secrets redacted, owner-only permissions."""
    import json
    write_private_text(path, json.dumps(redact(obj), indent=2, sort_keys=True) + "\n")
