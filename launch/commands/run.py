"""``captionbeam run``: the whole chain end to end (default: the embedded sample dataset).

With no arguments it generates the sample dataset into ``--workdir`` and runs features -> captions ->
train -> evaluate -> caption a few held-out images -> HTML report, on DirectRunner. ``--config
run.yaml`` and/or flags point it at real data and a bucket (see ``launch/config.py``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from captionbeam.launch.arg_types import name_equals_file, output_dir, positive_float
from captionbeam.launch.command_args import CommandError
from captionbeam.launch.exit_codes import OK
from captionbeam.pipelines.options import Runner, RunnerFlags, runner_flags

from captionbeam.launch.config import (DEFAULT_WORKDIR, CaptionsSection, ConfigError, EvaluateSection, FeaturesSection,
                           RunConfig, SampleSection, TrainSection)

HELP = "the whole chain end to end (default: on the embedded sample dataset)"
BEAM = True

_S, _F, _C, _T, _E = SampleSection(), FeaturesSection(), CaptionsSection(), TrainSection(), EvaluateSection()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Flags override --config; what neither sets keeps the defaults shown. Beam pipeline options (--runner, "
        "--direct_num_workers, Dataflow's options, ...) and --profile apply to the Beam stages (features, captions); "
        "a profile's `train:` section adds `captionbeam train` flags. Outputs under --workdir: sample/, features/, "
        "data/, model/, eval/ (metrics.json, captions.jsonl), report/index.html, stages/<stage>.json.")
    g = parser.add_argument_group("run")
    g.add_argument("--config", default=None, metavar="RUN.YAML", help="run configuration file, local or gs://")
    g.add_argument("--workdir", default=None, type=output_dir,
                   help=f"output root, local or gs:// (default: {DEFAULT_WORKDIR})")
    g.add_argument("--resume", action="store_true",
                   help="skip stages that finished earlier with the same command line (stages/<stage>.json)")
    from captionbeam.pipelines.lease import FORCE_HELP
    g.add_argument("--force", action="store_true", help=FORCE_HELP)
    g.add_argument("--no-report", dest="report", action="store_false", default=None,
                   help="do not write the HTML report")
    d = parser.add_argument_group("data (default: the embedded sample dataset)")
    d.add_argument("--images", nargs="+", default=None, metavar="GLOB", help="image globs, local or gs://")
    d.add_argument("--captions", default=None, help="captions file (Flickr8k token, Kaggle CSV, COCO JSON, JSONL)")
    d.add_argument("--caption-format", default=None, help="format of --captions (default: auto)")
    d.add_argument("--split", action="append", type=name_equals_file, default=None, metavar="NAME=FILE", dest="splits",
                   help="split file per split (train, dev and the evaluation split are required with --images)")
    d.add_argument("--sample-images", type=int, default=None,
                   help=f"images in the generated sample dataset (default: {_S.images})")
    d.add_argument("--sample-size", type=int, default=None,
                   help=f"side of the sample images in pixels (default: {_S.size})")
    d.add_argument("--seed", type=int, default=None, help=f"sample dataset seed (default: {_S.seed})")
    f = parser.add_argument_group("features")
    f.add_argument("--encoder", default=None, help=f"`captionbeam features` encoder (default: {_F.encoder})")
    f.add_argument("--weights", default=None,
                   help=f"encoder weights: imagenet, none or a path (default: {_F.weights}: no download)")
    f.add_argument("--image-size", type=int, default=None, help=f"encoder input size (default: {_F.image_size})")
    f.add_argument("--features-batch-size", type=int, default=None,
                   help=f"images per encoder batch (default: {_F.batch_size})")
    c = parser.add_argument_group("captions")
    c.add_argument("--clean", default=None, help=f"caption cleaning rule (default: {_C.clean})")
    c.add_argument("--min-count", type=int, default=None, help=f"vocabulary min count (default: {_C.min_count})")
    t = parser.add_argument_group("training")
    from captionbeam.model.config import ARCHITECTURES
    t.add_argument("--arch", default=None, choices=ARCHITECTURES,
                   help=f"architecture (default: {_T.arch}; attention needs a conv-map encoder)")
    t.add_argument("--epochs", type=int, default=None, help=f"training epochs (default: {_T.epochs})")
    t.add_argument("--batch-size", type=int, default=None, help=f"training batch size (default: {_T.batch_size})")
    t.add_argument("--learning-rate", type=positive_float, default=None,
                   help=f"Adam learning rate (default: {_T.learning_rate})")
    t.add_argument("--train-arg", action="append", default=None, metavar="FLAG",
                   help="extra `captionbeam train` flag, repeatable, e.g. --train-arg=--learning-rate=0.003")
    e = parser.add_argument_group("evaluation")
    e.add_argument("--eval-split", default=None, help=f"held-out split to evaluate (default: {_E.split})")
    e.add_argument("--beam-size", type=int, default=None, help=f"beam width, 1 = greedy (default: {_E.beam_size})")
    e.add_argument("--eval-arg", action="append", default=None, metavar="FLAG",
                   help="extra `captionbeam evaluate` flag, repeatable, e.g. --eval-arg=--coco-metrics=bleu,cider "
                        "(no METEOR: no JVM start)")
    e.add_argument("--caption-images", type=int, default=None,
                   help=f"held-out images to caption for the report (default: {_E.caption_images})")


@dataclass(frozen=True)
class RunCommandConfig:
    """The run's configuration (``--config`` + flags), how to run it, and the Beam flags of its Beam stages."""
    run: RunConfig
    runner: RunnerFlags = RunnerFlags.plain()
    resume: bool = False
    force: bool = False
    profiles_file: Optional[str] = None


def config_from_args(args: argparse.Namespace, runner: Runner = None) -> RunCommandConfig:
    """:class:`RunCommandConfig` of ``--config`` and the flags; :class:`CommandError` for a bad one."""
    from captionbeam.launch import config as cfg
    try:
        config = cfg.load(args.config) if args.config else RunConfig()
        cfg.apply_overrides(config, {
            "workdir": args.workdir, "report": args.report,
            "data.images": args.images, "data.captions": args.captions, "data.caption_format": args.caption_format,
            "data.splits": dict(args.splits) if args.splits else None,
            "sample.images": args.sample_images, "sample.size": args.sample_size, "sample.seed": args.seed,
            "features.encoder": args.encoder, "features.weights": args.weights, "features.image_size": args.image_size,
            "features.batch_size": args.features_batch_size,
            "captions.clean": args.clean, "captions.min_count": args.min_count,
            "train.arch": args.arch, "train.epochs": args.epochs, "train.batch_size": args.batch_size,
            "train.learning_rate": args.learning_rate,
            "train.extra": (config.train.extra + list(args.train_arg)) if args.train_arg else None,
            "evaluate.split": args.eval_split, "evaluate.beam_size": args.beam_size,
            "evaluate.caption_images": args.caption_images,
            "evaluate.extra": (config.evaluate.extra + list(args.eval_arg)) if args.eval_arg else None,
        })
        if getattr(args, "profile", None) and not config.runner.profile:
            config.runner.profile = args.profile
        config = config.validate()
    except (ConfigError, KeyError, ValueError, FileNotFoundError) as e:
        raise CommandError(str(e)) from None
    return RunCommandConfig(run=config, runner=runner_flags(runner), resume=bool(getattr(args, "resume", False)),
                            force=bool(getattr(args, "force", False)),
                            profiles_file=getattr(args, "profiles_file", None))


def _pipeline(config: RunCommandConfig, console=None):
    """The RunPipeline of this config, with per-stage Beam flags (profile section of each stage)."""
    from captionbeam.launch.beam_options import merge_flags
    from captionbeam.launch.profiles import load_profiles, profile_args, profile_train_args, profiles_file
    from captionbeam.launch.run import RunPipeline

    run = config.run
    explicit = list(config.runner.args)
    # an explicit runner: without one, Beam tries to download its Prism runner before falling back
    default_runner = ["--runner=DirectRunner"]
    stage_args = lambda stage: merge_flags(default_runner, explicit, run.runner.pipeline_args)  # noqa: E731
    train_args: list = []
    profile = run.runner.profile
    if profile:
        path = profiles_file(run.runner.profiles_file or config.profiles_file)
        profiles = load_profiles(path)
        own = set(merge_flags(profile_args(profiles, profile, "run")))
        explicit = [a for a in explicit if a not in own]   # what the user typed, without the profile's

        def stage_args(stage):  # noqa: F811 - the profile's section for this stage, then explicit flags
            return merge_flags(default_runner, profile_args(profiles, profile, stage), run.runner.pipeline_args,
                               explicit)
        train_args = profile_train_args(profiles, profile)
    return RunPipeline(run, pipeline_args=explicit, train_profile_args=train_args, stage_pipeline_args=stage_args,
                       resume=config.resume, console=console)


@dataclass(frozen=True)
class RunPlan:
    """The run's stages (``command_args.Stage``: each command's typed config, every stage's flags checked)
    and the equivalent ``captionbeam`` line of each, which a dry run prints."""
    pipe: object          # launch.run.RunPipeline
    stages: Tuple[object, ...]
    lines: Tuple[str, ...]

    def summary_lines(self) -> List[str]:
        return list(self.lines)


def plan(config: RunCommandConfig) -> RunPlan:
    """Every stage's flags (``--train-arg``, ``--eval-arg``, the profile's sections) checked before anything
    runs; :class:`CommandError` naming what is wrong."""
    try:
        pipe = _pipeline(config)
        stages = tuple(pipe.stages()) + (pipe.caption_stage(["<held-out images>"]),)
        lines = [s.line for s in stages] + ["(report) -> " + pipe.layout.report]
    except (ConfigError, KeyError, ValueError, FileNotFoundError) as e:
        if isinstance(e, CommandError):
            raise
        raise CommandError(str(e)) from None
    return RunPlan(pipe=pipe, stages=stages, lines=tuple(lines))


@dataclass
class RunResult:
    """What ``RunPipeline.run`` returns: metrics, captions, the report's path, seconds, the stages."""
    outcome: Dict[str, object]

    def summary_lines(self) -> List[str]:
        return [f"{s['name']}: {s['summary']}" for s in self.outcome.get("stages", [])]


def run(config: RunCommandConfig, runner: Runner = None, planned: Optional[RunPlan] = None) -> RunResult:
    """Every stage under ``--workdir``'s lease (the stages print as they go) -> :class:`RunResult`;
    :class:`CommandError` for bad flags, ``launch.run.StageError`` (a CommandFault) for a failed stage."""
    from dataclasses import replace
    from captionbeam.pipelines.lease import output_lease
    if runner is not None:
        config = replace(config, runner=runner_flags(runner))
        planned = None
    p = planned or plan(config)
    with output_lease(p.pipe.layout.workdir, "run", config.force, flag="--workdir"):
        return RunResult(p.pipe.run())


def main(args: argparse.Namespace, runner: Runner = None) -> int:
    """The stages print their lines and the run's summary as they go."""
    run(config_from_args(args, runner))
    return OK
