"""Beam pipeline options shared by every job."""
from __future__ import annotations

from typing import Sequence

from captionbeam.pipelines.io import PLUGIN_PATH, use_anonymous_gcs_if_emulated


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


def new_pipeline(pipeline_args: Sequence[str]):
    """``beam.Pipeline`` with :func:`pipeline_options`. ``DirectRunner`` (also the default when no
    ``--runner`` is given) runs in Beam's own Python engines (FnApiRunner, in-process or with
    ``--direct_running_mode=multi_processing``), the ones the tests run: Beam ≥ 2.6x's DirectRunner would
    first try to download and start the Prism binary for some pipelines, which fails offline, ignores the
    ``direct_*`` options and differs between machines. ``--runner=PrismRunner`` still chooses Prism."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.runners.direct.direct_runner import DirectRunner
    options = pipeline_options(pipeline_args)
    if (options.view_as(StandardOptions).runner or "DirectRunner") in ("DirectRunner", "direct"):
        runner = DirectRunner()
        runner.is_interactive()  # public switch; DirectRunner reads it only to skip its Prism attempt
        return beam.Pipeline(runner=runner, options=options)
    return beam.Pipeline(options=options)
