"""``captionbeam retrain``: featurise newly landed images, warm-start training, promote if metrics hold.

A model root (local or gs://) holds versions/vNNN/ and a CURRENT pointer (see launch/retrain/root.py).
First ``--init`` it from a trained model (or ``--from-run WORKDIR`` of ``captionbeam run``), then run
``captionbeam retrain --root R --images GLOB --captions FILE`` whenever images land, or ``--watch``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from captionbeam.launch.arg_types import name_equals_file, non_negative_float, positive_int
from captionbeam.launch.command_face import CommandFault
from captionbeam.launch.exit_codes import OK
from captionbeam.pipelines.options import Runner, runner_flags

# what cli.run_command prints on Ctrl-C (exit INTERRUPTED)
ON_INTERRUPT = "stopped; the next start resumes from the last finished batch"

HELP = "featurise newly landed images, warm-start training, promote if metrics hold"
BEAM = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Root layout: CURRENT (served version), versions/vNNN/ (model dirs + version.json with metrics and the "
        "promotion decision), data/ (captions and fixed dev/test splits), features/ (the feature manifest: every "
        "featurised image's SHA-256), attempts/<batch>/, state/consumed/<batch>.jsonl (what each finished batch "
        "consumed: stop and restart at any time). Beam options and --profile apply to the features and captions "
        "jobs.")
    g = parser.add_argument_group("model root")
    g.add_argument("--root", required=True, help="model root, local or gs://")
    from captionbeam.pipelines.lease import FORCE_HELP
    g.add_argument("--force", action="store_true", help=FORCE_HELP)
    g.add_argument("--init", action="store_true",
                   help="initialise --root from --model-dir, --features, --captions and --split files (or --from-run)")
    g.add_argument("--from-run", default=None, metavar="WORKDIR",
                   help="with --init: take model, features, captions and splits from a `captionbeam run` workdir")
    g.add_argument("--model-dir", default=None, help="with --init: the trained model that becomes v001")
    g.add_argument("--features", default=None, help="with --init: the `captionbeam features` output it was trained on")
    g.add_argument("--data", default=None, help="with --init: the `captionbeam captions` output (for its cleaning rule)")
    g.add_argument("--split", action="append", type=name_equals_file, default=None, metavar="NAME=FILE", dest="splits",
                   help="with --init: split files (train, dev and the evaluation split); dev and test stay fixed")
    n = parser.add_argument_group("new data")
    n.add_argument("--images", nargs="+", default=None, metavar="GLOB",
                   help="globs of landed images (local or gs://); with --watch, the prefix to poll")
    n.add_argument("--captions", nargs="+", default=None, metavar="FILE",
                   help="caption files for the new images (Flickr8k token, Kaggle CSV, COCO JSON, JSONL); "
                        "with --init, the original captions file")
    n.add_argument("--extend-vocab", action="store_true",
                   help="grow the vocabulary with the new captions' words (and the embeddings); default: frozen, "
                        "new words map to <unk>")
    t = parser.add_argument_group("training and promotion")
    t.add_argument("--epochs", type=positive_int, default=3, help="warm-start epochs (default: 3)")
    t.add_argument("--batch-size", type=positive_int, default=32, help="training batch size (default: 32)")
    t.add_argument("--train-arg", action="append", default=[], metavar="FLAG",
                   help="extra `captionbeam train` flag, repeatable (e.g. --train-arg=--learning-rate=0.0003)")
    t.add_argument("--eval-split", default="test", help="the fixed split the gate evaluates on (default: test)")
    t.add_argument("--beam-size", type=positive_int, default=1, help="beam width for evaluation (default: 1)")
    t.add_argument("--tolerance", type=non_negative_float, default=0.05,
                   help="promote only if CIDEr-D and BLEU-4 each fall by at most this fraction of the old "
                        "value (default: 0.05)")
    t.add_argument("--min-drop", type=non_negative_float, default=0.005,
                   help="absolute floor of the allowed drop, for near-zero scores (default: 0.005)")
    w = parser.add_argument_group("watching")
    w.add_argument("--watch", default=None, metavar="PREFIX",
                   help="poll PREFIX (a directory or glob of images) and retrain when --min-new images arrived")
    w.add_argument("--interval", type=non_negative_float, default=300.0, help="seconds between polls (default: 300)")
    w.add_argument("--min-new", type=positive_int, default=1,
                   help="new images (with captions) needed to start a retraining (default: 1)")
    w.add_argument("--max-polls", type=positive_int, default=None, help="stop after N polls (default: forever)")
    parser.add_argument("--json", action="store_true", help="print each attempt's result as one JSON object")


def _watch_globs(prefix: str):
    if any(ch in prefix for ch in "*?["):
        return [prefix]
    base = prefix.rstrip("/")
    return [f"{base}/*.{ext}" for ext in ("jpg", "jpeg", "png", "JPG", "JPEG", "PNG")]


@dataclass(frozen=True)
class RetrainInit:
    """``--init``: the trained model that becomes v001, the inputs it was trained on, the fixed splits."""
    model_dir: Optional[str]
    features: Optional[str]
    captions: Optional[str]
    data: Optional[str] = None
    splits: Tuple[Tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RetrainCommandConfig:
    """The flags, typed: ``--init`` (``init``), else one attempt or a ``--watch`` (``attempt``)."""
    attempt: object                         # launch.retrain.attempt.RetrainConfig
    init: Optional[RetrainInit] = None
    watch: bool = False
    interval: float = 300.0
    max_polls: Optional[int] = None
    force: bool = False


def _init_from_args(args: argparse.Namespace) -> RetrainInit:
    """``--init``'s inputs; ``--from-run WORKDIR`` fills those not given from a ``captionbeam run`` workdir
    (its captions file and splits from the captions stage's typed config: ``launch.run.recorded_captions_config``)."""
    import captionbeam.pipelines.io as pio
    from captionbeam.launch.command_args import CommandError
    model_dir, features, data, splits = args.model_dir, args.features, args.data, dict(args.splits or [])
    captions = (args.captions or [None])[0]
    if args.from_run:
        from captionbeam.launch.run import recorded_captions_config
        w = args.from_run
        model_dir = model_dir or pio.join(w, "model")
        features = features or pio.join(w, "features")
        data = data or pio.join(w, "data")
        if not captions or not splits:
            try:
                recorded = recorded_captions_config(w)
            except ValueError as e:
                raise CommandError(f"--from-run: {e}") from None
            if recorded is not None:
                captions = captions or recorded.captions
                for name, path in recorded.splits:
                    splits.setdefault(name, path)
    return RetrainInit(model_dir=model_dir, features=features, captions=captions, data=data,
                       splits=tuple(splits.items()))


def config_from_args(args: argparse.Namespace, runner: Runner = None) -> RetrainCommandConfig:
    """The command's config: an attempt's (or a watch's) ``RetrainConfig`` from these flags, and
    ``--init``'s inputs when it is given. ``runner``: the Beam flags of the features and captions jobs."""
    from captionbeam.launch.beam_options import merge_flags
    from captionbeam.launch.retrain.attempt import RetrainConfig
    images = list(args.images or [])
    if args.watch:
        images += _watch_globs(args.watch)
    attempt = RetrainConfig(root=args.root, images=images, captions=list(args.captions or []),
                            extend_vocab=args.extend_vocab, min_new=args.min_new, epochs=args.epochs,
                            batch_size=args.batch_size, train_args=list(args.train_arg), eval_split=args.eval_split,
                            beam_size=args.beam_size, tolerance=args.tolerance, min_drop=args.min_drop,
                            pipeline_args=merge_flags(["--runner=DirectRunner"], runner_flags(runner).args))
    return RetrainCommandConfig(attempt=attempt, init=_init_from_args(args) if args.init else None,
                                watch=bool(args.watch), interval=args.interval, max_polls=args.max_polls,
                                force=bool(args.force))


@dataclass(frozen=True)
class RetrainPlan:
    what: str

    def summary_lines(self) -> List[str]:
        return [self.what]


def plan(config: RetrainCommandConfig) -> RetrainPlan:
    """Every check of the flags before any work: ``--init``'s inputs, ``--images``, the ``--train-arg``
    flags (parsed by train's own parser); :class:`CommandError` naming the flag."""
    from captionbeam.launch.command_args import CommandError, stage
    from captionbeam.launch.commands import train as train_cmd
    root = config.attempt.root
    if config.init is not None:
        i = config.init
        missing = [f for f, v in (("--model-dir", i.model_dir), ("--features", i.features), ("--captions", i.captions))
                   if not v]
        if missing:
            raise CommandError(f"--init needs {', '.join(missing)} (or --from-run WORKDIR)")
        return RetrainPlan(f"retrain --init: {root} from {i.model_dir}")
    if not config.attempt.images:
        raise CommandError("--images or --watch PREFIX is required")
    try:
        stage(train_cmd, {"data": "DATA", "model_dir": "MODEL_DIR"}, extra=config.attempt.train_args)
    except CommandError as e:
        raise CommandError(f"--train-arg: {e}") from None
    what = "watch" if config.watch else "one attempt"
    return RetrainPlan(f"retrain ({what}): {root} with {' '.join(config.attempt.images)}")


@dataclass
class RetrainResult:
    """What each attempt (or ``--init``) decided."""
    results: List[object] = field(default_factory=list)    # launch.retrain.attempt.AttemptResult

    def summary_lines(self) -> List[str]:
        from captionbeam.launch.retrain.attempt import describe
        return [line for r in self.results for line in describe(r)]


def run(config: RetrainCommandConfig, on_result: Optional[Callable[[object], None]] = None,
        planned: Optional[RetrainPlan] = None) -> RetrainResult:
    """Everything (``--init``, one attempt, ``--watch``) under the root's lease: one retrain per root.
    ``on_result`` gets each attempt's result as soon as it is decided. A bad root or input found on the
    way is a :class:`~launch.command_face.CommandFault` (the attempt started)."""
    from captionbeam.launch.command_args import CommandError
    from captionbeam.pipelines.lease import output_lease
    planned or plan(config)
    out = RetrainResult()

    def emit(result) -> None:
        out.results.append(result)
        if on_result:
            on_result(result)

    with output_lease(config.attempt.root, "retrain", config.force, flag="--root"):
        try:
            _run(config, emit)
        except CommandError:
            raise
        except (FileNotFoundError, ValueError) as e:     # found while the attempt ran: it started
            raise CommandFault(str(e)) from None
    return out


def _run(config: RetrainCommandConfig, emit: Callable[[object], None]) -> None:
    from captionbeam.launch.retrain.attempt import retrain_once
    from captionbeam.launch.retrain.bootstrap import init_root
    from captionbeam.launch.retrain.watch import watch
    c = config.attempt
    if config.init is not None:
        i = config.init
        emit(init_root(c.root, i.model_dir, i.features, i.captions, dict(i.splits), eval_split=c.eval_split,
                       beam_size=c.beam_size, data_dir=i.data))
    elif config.watch:
        watch(c, config.interval, config.max_polls, on_result=emit)
    else:
        emit(retrain_once(c))


def main(args: argparse.Namespace, runner: Runner = None) -> int:
    from captionbeam.launch.retrain.attempt import describe

    def emit(result) -> None:
        if args.json:
            print(result.to_json().replace("\n", " "))
        else:
            print("\n".join(describe(result)))
        sys.stdout.flush()

    run(config_from_args(args, runner), on_result=emit)
    return OK
