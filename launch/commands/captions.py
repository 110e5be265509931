"""``captionbeam captions``: clean captions, build the vocabulary over the training split and join
captions with feature records into per-split training TFRecords (a Beam job).

Example (Flickr8k)::

    captionbeam captions --captions text/Flickr8k.token.txt \\
        --split train=text/Flickr_8k.trainImages.txt --split dev=text/Flickr_8k.devImages.txt \\
        --split test=text/Flickr_8k.testImages.txt --features work/features --output work/data
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import List

from captionbeam.launch.arg_types import int_at_least, name_equals_file, output_dir
from captionbeam.launch.command_args import CommandError
from captionbeam.launch.exit_codes import OK
from captionbeam.pipelines.options import Runner

HELP = "clean captions, build the vocabulary, join with features into training TFRecords (Beam job)"
BEAM = True

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from captionbeam.model.caption_files import FORMATS
    from captionbeam.pipelines.captions import DEFAULT_MAX_CAPTION_TOKENS
    from captionbeam.model.text import CLEANERS

    parser.epilog = (
        "Outputs under --output: vocab.txt (line number = id; <pad> <unk> <start> <end> first), token_counts.tsv, "
        "stats.json (vocabulary size, longest caption, images / captions / unknown-token rate per split, join "
        "accounting), <split>-NNNNN-of-NNNNN.tfrecord with --features (features + all captions as token ids) or "
        "<split>-captions-NNNNN-of-NNNNN.tfrecord without, features_spec.json (copied), join/<category>.txt (ids "
        "of images that could not be joined, by reason) and dead_letters/*.jsonl (unparseable lines). "
        "Any Beam pipeline option (--runner, --direct_num_workers, ...) passes through.")
    g = parser.add_argument_group("inputs and outputs")
    g.add_argument("--captions", required=True, metavar="FILE",
                   help="captions file, local or gs://: Flickr8k token file, Kaggle-style CSV (image,caption), "
                        "COCO captions JSON or JSON lines")
    g.add_argument("--format", default="auto", choices=("auto",) + tuple(FORMATS),
                   help="format of --captions; auto guesses from the name and first bytes (default: auto)")
    g.add_argument("--split", action="append", type=name_equals_file, default=[], metavar="NAME=FILE", dest="splits",
                   help="a split and its Flickr8k-style split file (one image file name per line); repeat for "
                        "each split, e.g. --split train=trainImages.txt --split dev=devImages.txt. Without any, "
                        "every image goes to 'train'. Images in no split are counted in join/not_in_any_split.txt")
    g.add_argument("--features", default=None, metavar="DIR",
                   help="directory written by `captionbeam features` (features-*.tfrecord + features_spec.json); "
                        "joined by image id. Without it, caption-only records are written")
    g.add_argument("--output", required=True, type=output_dir, metavar="DIR", help="output directory, local or gs://")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the files of an earlier run in --output (by default the job refuses to mix runs)")
    from captionbeam.pipelines.lease import FORCE_HELP
    g.add_argument("--force", action="store_true", help=FORCE_HELP)
    g.add_argument("--num-shards", type=int_at_least(0), default=0, metavar="N",
                   help="TFRecord shards per split; 0 = auto, about 128 MiB per shard (default: 0)")
    t = parser.add_argument_group("text and vocabulary")
    t.add_argument("--clean", default="seed", choices=sorted(CLEANERS),
                   help="cleaning rule: seed = the classic tutorial exactly (lowercase, strip punctuation, drop "
                        "one-letter and non-alphabetic tokens); basic = unicode words incl. 'a' and numbers; "
                        "none = whitespace split (default: seed)")
    t.add_argument("--keep-empty", action="store_true",
                   help="keep captions that clean to no tokens (e.g. 'A' under seed) as <start> <end>, as the "
                        "classic tutorial does; by default they are dead letters (stage clean)")
    t.add_argument("--min-count", type=int_at_least(1), default=5, metavar="N",
                   help="keep tokens seen at least this many times in --vocab-split (default: 5)")
    t.add_argument("--vocab-split", default="train", metavar="NAME",
                   help="the split whose records' captions build the vocabulary (with --features: only images "
                        "that have features, i.e. exactly what the trainer sees) (default: train)")
    t.add_argument("--max-caption-tokens", type=int_at_least(1), default=DEFAULT_MAX_CAPTION_TOKENS, metavar="N",
                   help="cut captions to their first N tokens after cleaning (it bounds the model's max length "
                        "and training cost); the number cut is in stats.json 'truncated' (default: "
                        f"{DEFAULT_MAX_CAPTION_TOKENS})")
    t.add_argument("--vocab", default=None, metavar="FILE",
                   help="use this vocab.txt instead of building one (e.g. to encode new data for a trained model)")


def config_from_args(args: argparse.Namespace):
    from captionbeam.pipelines.captions import CaptionsConfig
    return CaptionsConfig(
        captions=args.captions, output=args.output, fmt=args.format, splits=tuple(args.splits), clean=args.clean,
        min_count=args.min_count, vocab_split=args.vocab_split, vocab=args.vocab, features=args.features,
        num_shards=args.num_shards, overwrite=args.overwrite, keep_empty=args.keep_empty,
        max_caption_tokens=args.max_caption_tokens, force=bool(getattr(args, "force", False)))


def plan(config):
    """Every check before any work (``pipelines.captions.plan``: the captions file, the splits, the
    vocabulary, the features, the output) -> its ``Plan`` (``summary_lines()``); :class:`CommandError`
    names the flag."""
    from captionbeam.model.caption_files import CaptionFileError
    from captionbeam.pipelines.captions import CaptionsConfigError, plan as plan_job
    try:
        return plan_job(config)
    except (CaptionsConfigError, CaptionFileError) as e:
        raise CommandError(str(e)) from None


@dataclass
class CaptionsCommandResult:
    """The finished job (``pipelines.captions.RunResult``: stats, seconds, counters) and its output."""
    job: object
    output: str

    def summary_lines(self) -> List[str]:
        from captionbeam.pipelines.captions import summary_lines
        return list(summary_lines(self.job.stats, self.job.seconds)) + [
            f"outputs: {self.output} (vocab.txt, stats.json, records; join lists in {self.output.rstrip('/')}/join/)"]


def run(config, runner: Runner = None, planned=None) -> CaptionsCommandResult:
    """The captions job under the output's lease (planned there) -> :class:`CaptionsCommandResult`;
    :class:`CommandError` names a bad input."""
    from captionbeam.model.caption_files import CaptionFileError
    from captionbeam.pipelines.captions import CaptionsConfigError, CaptionsDataError, run as run_job
    from captionbeam.pipelines.lease import output_lease
    # Beam logs every string type hint it meets at INFO; nothing a user can act on.
    logging.getLogger("apache_beam.typehints.native_type_compatibility").setLevel(logging.WARNING)
    with output_lease(config.output, "captions", config.force):
        p = planned or plan(config)
        try:
            return CaptionsCommandResult(job=run_job(config, runner, p), output=config.output)
        except (CaptionsConfigError, CaptionsDataError, CaptionFileError) as e:
            raise CommandError(str(e)) from None


def main(args: argparse.Namespace, runner: Runner = None) -> int:
    print("\n".join(run(config_from_args(args), runner).summary_lines()))
    return OK
