"""One model-handler failure policy for every ``RunInference`` job (``features``' encoder, ``bulk``'s
captioner and export): a batch that raises is retried image by image, so one bad image costs only
itself and every other image of the batch gets its output. What fails alone becomes the caller's
failure value (bulk: a ``DeadLetter``; features: an :class:`InferenceFailure` that the job turns into a
dead letter naming the image's path, which its handler does not see)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, List, Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceFailure:
    """The output of an image the model failed on alone: the exception's class name and text."""
    error: str
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> "InferenceFailure":
        return cls(type(exc).__name__, str(exc) or repr(exc))


def run_isolated(batch: Sequence[Any], call: Callable[[Sequence[Any]], List[Any]],
                 on_failure: Callable[[Any, BaseException], Any], what: str = "inference") -> List[Any]:
    """``call(batch)`` (one output per item); if it raises, ``call([item])`` for each item, and
    ``on_failure(item, exception)`` in place of the output of an item that fails alone."""
    try:
        out = list(call(batch))
        if len(out) != len(batch):
            raise RuntimeError(f"{what}: {len(out)} outputs for a batch of {len(batch)}")
        return out
    except Exception as batch_error:  # noqa: BLE001
        if len(batch) == 1:
            return [on_failure(batch[0], batch_error)]
        log.warning("%s: a batch of %d failed (%s: %s); retrying its images one by one", what, len(batch),
                    type(batch_error).__name__, str(batch_error).strip().splitlines()[0][:300] if str(batch_error)
                    else "")
    out = []
    for item in batch:
        try:
            one = list(call([item]))
            if len(one) != 1:
                raise RuntimeError(f"{what}: {len(one)} outputs for one image")
            out.extend(one)
        except Exception as e:  # noqa: BLE001
            out.append(on_failure(item, e))
    return out
