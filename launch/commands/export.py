"""``captionbeam export``: one servable SavedModel (image bytes in, captions out, encoder included).

The command's face: ``config_from_args(args) -> ExportConfig``, ``plan(config) -> ExportPlan`` (flags and
the --output checked before anything is written), ``run(config) -> ExportResult`` with ``summary_lines()``
(the export's metadata as JSON); ``CommandError`` for bad input.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
from dataclasses import dataclass
from typing import Dict, List, Optional

from captionbeam.launch.arg_types import finite_float, output_dir
from captionbeam.launch.command_args import CommandError
from captionbeam.launch.exit_codes import OK
from captionbeam.launch.reader_flags import add_max_pixels
from captionbeam.model.limits import DEFAULT_MAX_PIXELS

HELP = "export a trained model as one servable SavedModel: image bytes in, captions out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="trained model directory (captionbeam train --model-dir)")
    parser.add_argument("--output", required=True, type=output_dir, help="SavedModel directory to write")
    parser.add_argument("--beam-size", type=int, default=1, help="beam width baked into the export (default 1: greedy)")
    parser.add_argument("--length-penalty", type=finite_float, default=0.0, metavar="ALPHA",
                        help="beam search ranks by log-prob / length**ALPHA (default 0)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="most tokens generated (default: the longest training caption)")
    parser.add_argument("--weights", choices=("best", "last"), default="best", help="which weights (default best)")
    add_max_pixels(parser, extra="; baked into the export: its serving function returns valid=False for a bigger "
                              "image, from the header, without decoding it")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output directory (atomically on a local disk)")
    from captionbeam.pipelines.lease import FORCE_HELP
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


@dataclass(frozen=True)
class ExportConfig:
    model_dir: str
    output: str
    beam_size: int = 1
    length_penalty: float = 0.0
    max_length: Optional[int] = None
    weights: str = "best"
    overwrite: bool = False
    force: bool = False       # take the export's lease from a run that holds it
    max_pixels: int = DEFAULT_MAX_PIXELS     # baked into the serving function


def config_from_args(args: argparse.Namespace) -> ExportConfig:
    return ExportConfig(model_dir=args.model_dir, output=args.output, beam_size=args.beam_size,
                        length_penalty=args.length_penalty, max_length=args.max_length, weights=args.weights,
                        overwrite=args.overwrite, force=bool(getattr(args, "force", False)),
                        max_pixels=args.max_pixels)


@dataclass(frozen=True)
class ExportPlan:
    replace_output: bool      # --output exists, is not empty, and --overwrite was given


def plan(config: ExportConfig) -> ExportPlan:
    """Every check before anything is written; ``CommandError`` naming the flag."""
    if config.beam_size < 1:
        raise CommandError(f"--beam-size must be >= 1, got {config.beam_size}")
    if config.max_length is not None and config.max_length < 1:
        raise CommandError(f"--max-length must be >= 1, got {config.max_length}")
    if config.length_penalty < 0:
        raise CommandError(f"--length-penalty must be >= 0, got {config.length_penalty}")
    import tensorflow as tf
    full = tf.io.gfile.exists(config.output) and bool(tf.io.gfile.listdir(config.output))
    if full and not config.overwrite:
        raise CommandError(f"--output {config.output} exists and is not empty (pass --overwrite)")
    return ExportPlan(replace_output=full)


@dataclass
class ExportResult:
    output: str
    metadata: Dict[str, object]

    def to_dict(self) -> Dict[str, object]:
        return {"output": self.output, **self.metadata}

    def summary_lines(self) -> List[str]:
        return json.dumps(self.to_dict(), indent=2).splitlines()


def run(config: ExportConfig, planned: Optional[ExportPlan] = None) -> ExportResult:
    """Export under the lease beside ``--output`` (``<output>.lease/``: the export is replaced whole).
    Locally the SavedModel is written to a run-private sibling and swapped in, so a kill or a full disk
    never leaves a half export at ``--output``; on gs:// a folder cannot be renamed: the old one is
    removed first."""
    from captionbeam.pipelines.lease import output_lease
    with output_lease(config.output, "export", config.force, beside=True):
        return _run(config, planned or plan(config))


def _run(config: ExportConfig, p: ExportPlan) -> ExportResult:
    import tensorflow as tf
    import captionbeam.pipelines.io as pio
    from captionbeam.model.export import export
    local = not pio.is_gcs(config.output)
    out = config.output.rstrip("/")
    target = f"{out}.tmp-{pio.run_token()}" if local else config.output
    if local:
        _remove_dead_siblings(out)
    elif p.replace_output:
        tf.io.gfile.rmtree(config.output)
    try:
        meta = export(config.model_dir, target, beam_size=config.beam_size, max_length=config.max_length,
                      alpha=config.length_penalty, which=config.weights, max_pixels=config.max_pixels)
        if local:
            _swap_in(target, out)
    except BaseException as e:
        if local and os.path.isdir(target):
            shutil.rmtree(target, ignore_errors=True)
        storage = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
        if isinstance(e, (OSError, ValueError)) and not storage:   # a storage fault is the CLI's one line
            raise CommandError(f"--model-dir {config.model_dir}: {e}") from None
        raise
    return ExportResult(output=config.output, metadata=meta)


def main(args, runner=None) -> int:
    print("\n".join(run(config_from_args(args)).summary_lines()))
    return OK



def _remove_dead_siblings(out: str) -> None:
    """``<out>.tmp-*`` / ``<out>.old-*`` folders of killed exports (we hold the lease: their runs are dead)."""
    parent, name = os.path.split(os.path.abspath(out))
    if not os.path.isdir(parent):
        return
    for entry in os.listdir(parent):
        if entry.startswith(f"{name}.tmp-") or entry.startswith(f"{name}.old-"):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _swap_in(new: str, out: str) -> None:
    """Make ``new`` the folder at ``out``: one rename when ``out`` is absent or empty, else move the old
    one aside, rename, then delete the old (a kill between the renames leaves ``out.old-*``; a re-run
    of the export replaces it)."""
    if os.path.isdir(out) and not os.listdir(out):
        os.rmdir(out)
    if not os.path.exists(out):
        os.rename(new, out)
        return
    old = f"{out}.old-{os.path.basename(new).rsplit('-', 1)[-1]}"
    os.rename(out, old)
    os.rename(new, out)
    shutil.rmtree(old, ignore_errors=True)
