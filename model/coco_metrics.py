"""COCO caption metrics through pycocoevalcap itself: PTB tokenisation, BLEU-1..4, METEOR, ROUGE-L, CIDEr-D.

The numbers are pycocoevalcap's own (the test compares this wrapper with the package run directly);
what the wrapper adds is only what keeps it from crashing or silently misaligning:

- ``java`` is looked up first (PTB tokenizer and METEOR are jars): a clear ``JavaNotFoundError``;
- characters that break lines (``\\r``, ``\\v``, ``\\f``, U+0085, U+2028, U+2029, ...) become spaces
  before tokenisation: the Stanford tokenizer splits lines on them, pycocoevalcap does not, and
  every caption after such a character would be scored against the wrong image;
- the tokenizer's output is checked (one line per caption) instead of trusting ``zip``;
- pycocoevalcap's BLEU prints to stdout: it is sent to stderr, so ``--json`` output stays one object;
- the PTB tokenizer's Java child writes "PTBTokenizer tokenized N tokens at ..." to the terminal: its
  stderr goes to a temporary file instead (unless this module's logger is at DEBUG, as with
  ``--log-level DEBUG``), that line is dropped, anything else it or another thread wrote meanwhile is
  written back, and a failure carries the captured text; METEOR's child already has a pipe of its own;
- the METEOR java process is closed when done, and a failure there is reported as such.

Keys are pycocoevalcap's: ``Bleu_1``..``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr`` (CIDEr-D:
pycocoevalcap's ``Cider`` is the clipped, length-penalised, x10 variant used by the COCO server).
SPICE is not included (it needs Stanford CoreNLP models downloaded at run time).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

COCO_KEYS: Tuple[str, ...] = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
# how the product prints each key (the keys stay pycocoevalcap's in JSON): CIDEr is CIDEr-D everywhere
COCO_LABELS: Dict[str, str] = {"Bleu_1": "Bleu_1", "Bleu_2": "Bleu_2", "Bleu_3": "Bleu_3", "Bleu_4": "Bleu_4",
                               "METEOR": "METEOR", "ROUGE_L": "ROUGE_L", "CIDEr": "CIDEr-D"}
METRICS: Tuple[str, ...] = ("bleu", "meteor", "rouge", "cider")

log = logging.getLogger(__name__)

# the one line the PTB tokenizer writes to stderr on every call (edu.stanford.nlp.process.PTBTokenizer)
_TOKENIZER_NOISE = re.compile(r"^PTBTokenizer tokenized \d+ tokens at [\d.,]+ tokens per second\.\s*$")

# Everything str.splitlines() splits on except "\n" (replaced too, as pycocoevalcap does).
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


class CocoMetricsError(RuntimeError):
    """COCO metrics could not be computed (missing Java or pycocoevalcap, a jar failing)."""


class JavaNotFoundError(CocoMetricsError):
    pass


@dataclass
class CocoResult:
    scores: Dict[str, float]
    per_image: Dict[str, Dict[str, float]] = field(default_factory=dict)


def check_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(
            "COCO metrics need a Java runtime on PATH (`java`): pycocoevalcap's PTB tokenizer and METEOR are "
            "jars. Install one (e.g. `apt-get install default-jre-headless`, Java 8+), or pass --no-coco "
            "to compute the NLTK BLEU scores only.")
    return java


def _import_pycocoevalcap():
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as e:
        raise CocoMetricsError(f"COCO metrics need pycocoevalcap (pip install 'captionbeam[eval]'): {e}") from None
    return PTBTokenizer, Bleu, Meteor, Rouge, Cider


def sanitize(text: str) -> str:
    """One caption on one line, as the PTB tokenizer must see it."""
    return _LINE_BREAKS.sub(" ", text)


@dataclass
class ChildStderr:
    """What :func:`child_stderr_captured` caught on fd 2 (``text``: read once the block ended)."""
    text: str = ""

    def tail(self, chars: int = 2000) -> str:
        return self.text[-chars:].strip()


@contextlib.contextmanager
def child_stderr_captured(noise: "re.Pattern[str]"):
    """fd 2 -> a temporary file for the block, so that child processes started inside (they inherit fd 2)
    write there instead of the terminal. Afterwards the lines matching ``noise`` are dropped and the rest
    (another thread's log line, a child's error) is written back to stderr, unless the block raised (the
    error then carries :attr:`ChildStderr.text`). Nothing is redirected when this module's logger is at
    DEBUG (``--log-level DEBUG``) or fd 2 cannot be duplicated."""
    caught = ChildStderr()
    if log.isEnabledFor(logging.DEBUG):
        yield caught
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield caught
        return
    failed = True
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield caught
            failed = False
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            size = os.fstat(tmp.fileno()).st_size
            caught.text = os.pread(tmp.fileno(), size, 0).decode("utf-8", "replace") if size else ""
            rest = "".join(line for line in caught.text.splitlines(keepends=True) if not noise.match(line))
            if rest and not failed:
                sys.stderr.write(rest)
                sys.stderr.flush()


def ptb_tokenize(captions: Mapping[str, Sequence[str]]) -> Dict[str, List[str]]:
    """pycocoevalcap's PTBTokenizer (lowercase, PTB tokens, punctuation removed), checked for alignment."""
    check_java()
    PTBTokenizer = _import_pycocoevalcap()[0]
    ids = list(captions)
    if not ids:
        return {}
    data = {i: [{"caption": sanitize(c)} for c in captions[i]] for i in ids}
    with child_stderr_captured(_TOKENIZER_NOISE) as stderr:
        try:
            out = PTBTokenizer().tokenize(data)
        except PermissionError as e:
            raise CocoMetricsError(f"pycocoevalcap's PTB tokenizer writes a temporary file beside its jar and "
                                   f"could not: {e}. Install pycocoevalcap in a writable environment (a "
                                   f"virtualenv).") from None
    for i in ids:
        if len(out.get(i, ())) != len(captions[i]):
            said = f"; its stderr: {stderr.tail()}" if stderr.tail() else ""
            raise CocoMetricsError(f"PTB tokenizer output does not line up with its input at image {i!r}: "
                                   f"{len(captions[i])} captions in, {len(out.get(i, ()))} out{said}")
    return out


def _close_meteor(meteor) -> None:
    p = getattr(meteor, "meteor_p", None)
    if p is None:
        return
    with contextlib.suppress(Exception):
        p.stdin.close()
    with contextlib.suppress(Exception):
        p.kill()
    with contextlib.suppress(Exception):
        p.wait(timeout=10)


def score_tokenized(gts: Mapping[str, List[str]], res: Mapping[str, List[str]],
                    metrics: Sequence[str] = METRICS, meteor=None) -> CocoResult:
    """Run the scorers on already tokenised ``gts`` (id -> references) and ``res`` (id -> [hypothesis]).

    ``meteor``: a running ``pycocoevalcap.meteor.meteor.Meteor`` to reuse (its JVM takes 15-30 s to
    start); it is left open. Without it one is started and closed here.
    """
    _, Bleu, Meteor, Rouge, Cider = _import_pycocoevalcap()
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown COCO metrics {sorted(unknown)}; choose from {METRICS}")
    gts, res = dict(gts), dict(res)
    ids = list(gts)
    scores: Dict[str, float] = {}
    per_image: Dict[str, Dict[str, float]] = {i: {} for i in ids}
    if not ids:
        raise ValueError("no images to score")
    if "bleu" in metrics:
        with contextlib.redirect_stdout(sys.stderr):
            score, per = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):
            scores[f"Bleu_{n + 1}"] = float(score[n])
            for i, s in zip(ids, per[n]):
                per_image[i][f"Bleu_{n + 1}"] = float(s)
    if "meteor" in metrics:
        check_java()
        own = meteor is None
        if own:
            meteor = Meteor()
        try:
            score, per = meteor.compute_score(gts, res)
        except (ValueError, BrokenPipeError, OSError) as e:
            err = b""
            with contextlib.suppress(Exception):
                meteor.meteor_p.kill()
                err = meteor.meteor_p.stderr.read()[-2000:]
            raise CocoMetricsError(f"METEOR (java -jar meteor-1.5.jar) failed: {e}; its stderr: "
                                   f"{err.decode('utf-8', 'replace')}") from None
        finally:
            if own:
                _close_meteor(meteor)
        scores["METEOR"] = float(score)
        for i, s in zip(ids, per):
            per_image[i]["METEOR"] = float(s)
    if "rouge" in metrics:
        score, per = Rouge().compute_score(gts, res)
        scores["ROUGE_L"] = float(score)
        for i, s in zip(ids, per):
            per_image[i]["ROUGE_L"] = float(s)
    if "cider" in metrics:
        score, per = Cider().compute_score(gts, res)
        scores["CIDEr"] = float(score)
        for i, s in zip(ids, per):
            per_image[i]["CIDEr"] = float(s)
    return CocoResult(scores=scores, per_image=per_image)


def coco_scores(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str],
                metrics: Sequence[str] = METRICS, meteor=None) -> CocoResult:
    """COCO metrics for aligned raw texts: ``image_id -> reference captions``, ``image_id -> prediction``.

    Both sides must hold the same ids (alignment is the caller's policy: see ``model.references``).
    """
    if set(references) != set(predictions):
        raise ValueError("references and predictions must cover the same image ids")
    ids = list(predictions)
    for i in ids:
        if len(references[i]) == 0:
            raise ValueError(f"image {i!r} has no reference captions")
    check_java()
    # Keys are passed as strings in a fixed order; METEOR and CIDEr do not depend on the order.
    gts = ptb_tokenize({i: list(references[i]) for i in ids})
    res = ptb_tokenize({i: [predictions[i]] for i in ids})
    return score_tokenized(gts, res, metrics, meteor=meteor)
