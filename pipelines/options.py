"""Beam pipeline options shared by every job, and :class:`RunnerFlags`: a job's runner flags as one frozen
object. ``launch.beam_options.parse_runner_flags`` makes it once at the command line; it is passed down as
it is, and :func:`new_pipeline` is the one place that turns it into Beam's ``PipelineOptions``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple, Union

from captionbeam.pipelines.io import PLUGIN_PATH, use_anonymous_gcs_if_emulated


@dataclass(frozen=True)
class RunnerFlags:
    """A Beam job's runner flags, parsed once and passed down: the merged flags (the profile's first,
    the command line's win, ``{engines}`` resolved), the options Beam resolves from them as the job's
    pipeline will see them, and warnings for the user. ``RunnerFlags.plain(args)``: flags a program
    passes as they are (the Python API, tests, a stage of ``run``), nothing resolved."""
    profile: Optional[str]
    args: Tuple[str, ...]
    options: Mapping[str, object]
    warnings: Tuple[str, ...] = ()

    @classmethod
    def plain(cls, args: Sequence[str] = ()) -> "RunnerFlags":
        return cls(profile=None, args=tuple(args), options={})


Runner = Union[RunnerFlags, Sequence[str], None]


def runner_flags(runner: Runner) -> RunnerFlags:
    """``runner`` as :class:`RunnerFlags` (None: no flags; a list of Beam flags: :meth:`RunnerFlags.plain`)."""
    if isinstance(runner, RunnerFlags):
        return runner
    if isinstance(runner, str):
        raise TypeError(f"runner flags: a RunnerFlags or a list of flags, not the string {runner!r}")
    return RunnerFlags.plain(tuple(runner or ()))


def pipeline_options(pipeline_args: Sequence[str]):
    """PipelineOptions from the command line's Beam flags, plus what every captionbeam job needs:
    the worker plugin that keeps gs:// on an emulator anonymous, and no pickled main session
    (DoFns live in importable modules, shipped to workers with ``--setup_file``). On an emulator
    (``STORAGE_EMULATOR_HOST``) it also makes this process's gs:// anonymous, as the plugin does on workers."""
    from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions
    args = list(pipeline_args)
    if not any(a.startswith("--beam_plugin") for a in args if PLUGIN_PATH in a):
        args.append(f"--beam_plugin={PLUGIN_PATH}")
    options = PipelineOptions(args)
    options.view_as(SetupOptions).save_main_session = False
    use_anonymous_gcs_if_emulated()
    return options


def new_pipeline(runner: Runner = None):
    """``beam.Pipeline`` with :func:`pipeline_options` of ``runner`` (:class:`RunnerFlags`, or a list of Beam
    flags). ``DirectRunner`` (also the default when no
    ``--runner`` is given) runs in Beam's own Python engines (FnApiRunner, in-process or with
    ``--direct_running_mode=multi_processing``), the ones the tests run: Beam ≥ 2.6x's DirectRunner would
    first try to download and start the Prism binary for some pipelines, which fails offline, ignores the
    ``direct_*`` options and differs between machines. ``--runner=PrismRunner`` still chooses Prism."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.runners.direct.direct_runner import DirectRunner
    options = pipeline_options(runner_flags(runner).args)
    if (options.view_as(StandardOptions).runner or "DirectRunner") in ("DirectRunner", "direct"):
        runner = DirectRunner()
        runner.is_interactive()  # public switch; DirectRunner reads it only to skip its Prism attempt
        return beam.Pipeline(runner=runner, options=options)
    return beam.Pipeline(options=options)
