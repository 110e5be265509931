"""Dead letters: the rows a Beam job writes for inputs it could not process, so the job finishes and
nothing is silently dropped.

One JSON object per line in ``<output>/dead_letters/dead_letters-NNNNN-of-NNNNN.jsonl``::

    {"path": "gs://b/img/x.jpg", "error": "TruncatedImageError", "message": "...", "stage": "decode"}

``error`` is the exception's class name (stable, greppable), ``message`` its text, ``stage`` the step
that failed (``match``, ``read``, ``decode``, ``inference``, ``shard`` ...). Used by ``features``,
image shards and bulk captioning.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Dict, List

import apache_beam as beam

import captionbeam.pipelines.io as pio
from captionbeam.model import jsonl
from captionbeam.pipelines.counters import NAMESPACE

DEAD_LETTERS_DIR = "dead_letters"
DEAD_LETTERS_PREFIX = "dead_letters"
DEAD_LETTERS_SUFFIX = ".jsonl"
MAX_MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class DeadLetter:
    path: str
    error: str
    message: str
    stage: str

    @classmethod
    def from_exception(cls, path: str, exc: BaseException, stage: str) -> "DeadLetter":
        message = str(exc) or repr(exc)
        return cls(path=str(path), error=type(exc).__name__, message=message[:MAX_MESSAGE_CHARS], stage=stage)

    def to_dict(self) -> Dict[str, str]:
        return asdict(self)

    def to_json(self) -> str:
        return jsonl.dumps_line(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, str]) -> "DeadLetter":
        return cls(path=d["path"], error=d["error"], message=d["message"], stage=d["stage"])

    @classmethod
    def from_json(cls, line: str) -> "DeadLetter":
        return cls.from_dict(json.loads(line))


def failed_batch_dead_letters(failed, path_of, stage: str = "inference") -> List[DeadLetter]:
    """A failed ``RunInference`` batch -> one dead letter per element of the batch.

    Beam's ``with_exception_handling`` gives ``(batch, (exception type, repr of the exception,
    traceback lines))``; ``error`` is the exception's class name as in :meth:`DeadLetter.from_exception`,
    ``message`` its repr. ``path_of(element)`` names each element's input."""
    batch, info = failed
    if isinstance(info, BaseException):
        exc_type, exc_text = type(info), str(info) or repr(info)
    elif isinstance(info, (tuple, list)) and len(info) >= 2:
        exc_type, exc_text = info[0], str(info[1])
    else:
        exc_type, exc_text = type(info), str(info)
    error = getattr(exc_type, "__name__", str(exc_type))
    items = batch if isinstance(batch, list) else [batch]
    return [DeadLetter(path=str(path_of(item)), error=error, message=exc_text[:MAX_MESSAGE_CHARS], stage=stage)
            for item in items]


def dead_letters_dir(output_dir: str) -> str:
    return pio.join(output_dir, DEAD_LETTERS_DIR)


def dead_letters_pattern(output_dir: str) -> str:
    return pio.join(dead_letters_dir(output_dir), f"{DEAD_LETTERS_PREFIX}-*{DEAD_LETTERS_SUFFIX}")


def read_dead_letters(output_dir: str):
    """All dead letters under ``output_dir`` (local or gs://), sorted by path: for tests and reports."""
    rows = []
    for path in pio.match([dead_letters_pattern(output_dir)]):
        rows.extend(DeadLetter.from_dict(d) for d in jsonl.loads(pio.read_text(path), path))
    return sorted(rows, key=lambda d: (d.path, d.stage))


class WriteDeadLetters(beam.PTransform):
    """PCollection[DeadLetter] -> ``<output_dir>/dead_letters/dead_letters-NNNNN-of-NNNNN.jsonl``.

    Always writes at least one (possibly empty) file, so a reader can tell "no dead letters" from
    "the job never got there". Also counts them in the ``captionbeam`` metrics namespace
    (``dead_letters`` and ``dead_letters_<stage>``)."""

    def __init__(self, output_dir: str, num_shards: int = 1, namespace: str = NAMESPACE):
        super().__init__()
        self.output_dir = output_dir
        self.num_shards = num_shards
        self.namespace = namespace

    def expand(self, pcoll):
        return (pcoll
                | "Count" >> beam.ParDo(_CountDeadLetters(self.namespace))
                | "ToJson" >> beam.Map(lambda d: d.to_json())
                | "Write" >> beam.io.WriteToText(
                    pio.join(dead_letters_dir(self.output_dir), DEAD_LETTERS_PREFIX),
                    file_name_suffix=DEAD_LETTERS_SUFFIX, num_shards=self.num_shards,
                    shard_name_template="-SSSSS-of-NNNNN"))


class _CountDeadLetters(beam.DoFn):
    def __init__(self, namespace: str):
        self.namespace = namespace

    def process(self, d):
        beam.metrics.Metrics.counter(self.namespace, "dead_letters").inc()
        beam.metrics.Metrics.counter(self.namespace, f"dead_letters_{d.stage}").inc()
        yield d
