"""``captionbeam export``: one servable SavedModel (image bytes in, captions out, encoder included).

The command's face: ``config_from_args(args) -> ExportConfig``, ``plan(config) -> ExportPlan`` (flags and
the --output checked before anything is written), ``run(config) -> ExportResult`` with ``summary_lines()``
(the export's metadata as JSON); ``CommandError`` for bad input.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Dict, List, Optional

from captionbeam.launch.arg_types import finite_float, output_dir
from captionbeam.launch.command_args import CommandError
from captionbeam.launch.exit_codes import OK
from captionbeam.launch.reader_flags import add_max_pixels
from captionbeam.model.limits import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)

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
                        help="replace an existing --output directory (the old export stays until the new one is "
                             "complete; a kill leaves the old or the new, never neither)")
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
    config: object = None     # the ExportConfig planned

    def summary_lines(self) -> List[str]:
        c = self.config
        return [f"export: {c.model_dir} ({c.weights} weights, beam {c.beam_size}) -> {c.output}"
                + (" (--overwrite: replaces the export there)" if self.replace_output else "")]


def plan(config: ExportConfig) -> ExportPlan:
    """Every check before anything is written; ``CommandError`` naming the flag."""
    if config.beam_size < 1:
        raise CommandError(f"--beam-size must be >= 1, got {config.beam_size}")
    if config.max_length is not None and config.max_length < 1:
        raise CommandError(f"--max-length must be >= 1, got {config.max_length}")
    if config.length_penalty < 0:
        raise CommandError(f"--length-penalty must be >= 0, got {config.length_penalty}")
    import captionbeam.pipelines.io as pio
    out = config.output.rstrip("/")
    full = (bool(pio.match([f"{out}/**"])) if pio.is_gcs(out)
            else os.path.isdir(out) and bool(os.listdir(out)))
    if full and not config.overwrite:
        raise CommandError(f"--output {config.output} exists and is not empty (pass --overwrite)")
    return ExportPlan(replace_output=full, config=config)


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
    The SavedModel is written complete to a run-private sibling first (``<output>.tmp-<token>``), then
    swapped in, so the old export stays usable until the new one is complete and a kill leaves the old
    or the new, never neither: locally two renames (:func:`_swap_in`); on gs:// (no folder rename) a
    journal ``<output>.swap.json`` naming the complete new copy is written first, then its objects are
    copied over ``--output`` and the old extras deleted (:func:`_swap_in_gcs`); a run killed after the
    journal is rolled forward by the next ``export`` into that output, before anything else."""
    from captionbeam.pipelines.lease import output_lease
    with output_lease(config.output, "export", config.force, beside=True):
        _recover(config.output.rstrip("/"))
        return _run(config, planned or plan(config))


def _run(config: ExportConfig, p: ExportPlan) -> ExportResult:
    import tempfile
    import captionbeam.pipelines.io as pio
    from captionbeam.model.export import export
    from captionbeam.pipelines.crash_points import crash_point
    local = not pio.is_gcs(config.output)
    out = config.output.rstrip("/")
    staged = f"{out}.tmp-{pio.run_token()}"
    # TensorFlow's own gs:// client does not follow a storage emulator: the SavedModel is written on this
    # machine and uploaded through Beam's FileSystems (launch/staging.py)
    target = staged if local else os.path.join(tempfile.mkdtemp(prefix="captionbeam-export-"), "saved")
    try:
        meta = export(config.model_dir, target, beam_size=config.beam_size, max_length=config.max_length,
                      alpha=config.length_penalty, which=config.weights, max_pixels=config.max_pixels)
        if not local:
            from captionbeam.launch.staging import copy_tree
            copy_tree(target, staged)
        crash_point("export:staged")          # the new export complete beside the old one
        if local:
            _swap_in(staged, out)
        else:
            _swap_in_gcs(staged, out)
    except BaseException as e:
        if local and os.path.isdir(staged):
            shutil.rmtree(staged, ignore_errors=True)
        storage = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
        from captionbeam.pipelines.storage_faults import explain
        if isinstance(e, (OSError, ValueError)) and not storage and explain(e) is None:
            raise CommandError(f"--model-dir {config.model_dir}: {e}") from None
        raise                                  # a storage fault is the CLI's one line
    finally:
        if not local:
            shutil.rmtree(os.path.dirname(target), ignore_errors=True)
    return ExportResult(output=config.output, metadata=meta)


def main(args, runner=None) -> int:
    print("\n".join(run(config_from_args(args)).summary_lines()))
    return OK



def _recover(out: str) -> None:
    """Finish or undo what a killed export into ``out`` left (we hold the lease: its run is dead), then
    remove its temporaries. A swap that had begun is rolled forward: locally ``out`` missing with
    ``out.old-T`` beside it means the new export ``out.tmp-T`` was complete (the swap starts only then);
    on gs:// the journal ``out.swap.json`` names the complete new copy."""
    import captionbeam.pipelines.io as pio
    if pio.is_gcs(out):
        journal = f"{out}.swap.json"
        if pio.exists(journal):
            staged = pio.read_json(journal)["new"]
            log.warning("export: finishing the replacement of %s by %s that a killed run began", out, staged)
            _roll_forward_gcs(staged, out, journal)
        dead = [f for f in pio.match([f"{out}.tmp-*/**"])]
        if dead:
            pio.delete(dead)
        return
    parent, name = os.path.split(os.path.abspath(out))
    if not os.path.isdir(parent):
        return
    if not os.path.exists(out):
        for entry in sorted(os.listdir(parent)):
            if entry.startswith(f"{name}.old-"):
                new = os.path.join(parent, f"{name}.tmp-{entry[len(name) + 5:]}")
                os.rename(new if os.path.isdir(new) else os.path.join(parent, entry), out)
                log.warning("export: finished the replacement of %s that a killed run began", out)
                break
    for entry in os.listdir(parent):
        if entry.startswith(f"{name}.tmp-") or entry.startswith(f"{name}.old-"):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _swap_in(new: str, out: str) -> None:
    """Make ``new`` the folder at ``out``: one rename when ``out`` is absent or empty, else move the old
    one aside, rename, then delete the old (a kill between the renames leaves ``out.old-T`` and the
    complete ``out.tmp-T``: :func:`_recover` of the next run renames the new one in)."""
    from captionbeam.pipelines.crash_points import crash_point
    if os.path.isdir(out) and not os.listdir(out):
        os.rmdir(out)
    if not os.path.exists(out):
        os.rename(new, out)
        return
    old = f"{out}.old-{os.path.basename(new).rsplit('-', 1)[-1]}"
    os.rename(out, old)
    crash_point("export:swapping")
    os.rename(new, out)
    shutil.rmtree(old, ignore_errors=True)


def _swap_in_gcs(new: str, out: str) -> None:
    """gs:// has no folder rename: write the journal (the commit point), then roll forward."""
    import captionbeam.pipelines.io as pio
    journal = f"{out}.swap.json"
    pio.write_json(journal, {"new": new, "output": out})
    _roll_forward_gcs(new, out, journal)


def _roll_forward_gcs(new: str, out: str, journal: str) -> None:
    """Copy every object of the complete export ``new`` over ``out``, delete ``out``'s objects the new
    one lacks, then the journal and ``new``. Idempotent: a re-run after a kill anywhere here redoes it."""
    import captionbeam.pipelines.io as pio
    from captionbeam.pipelines.crash_points import crash_point
    rel = lambda base, files: {f[len(base) + 1:]: f for f in files}  # noqa: E731
    new_files = rel(new, pio.match([f"{new}/**"]))
    old_files = rel(out, pio.match([f"{out}/**"]))
    for i, (name, src) in enumerate(sorted(new_files.items())):
        pio.write_bytes(f"{out}/{name}", pio.read_bytes(src))
        if i == 0:
            crash_point("export:swapping")     # out/ now holds a mix; the journal and new/ are whole
    extra = [f for name, f in old_files.items() if name not in new_files]
    if extra:
        pio.delete(extra)
    pio.delete([journal])
    pio.delete(list(new_files.values()))
