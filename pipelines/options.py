"""Beam pipeline options shared by every job."""
from __future__ import annotations

from typing import Sequence

from pipelines.io import PLUGIN_PATH


def pipeline_options(pipeline_args: Sequence[str]):
    """PipelineOptions from the command line's Beam flags, plus what every captionbeam job needs:
    the worker plugin that keeps gs:// on an emulator anonymous, and no pickled main session
    (DoFns live in importable modules, shipped to workers with ``--setup_file``)."""
    from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions
    args = list(pipeline_args)
    if not any(a.startswith("--beam_plugin") for a in args if PLUGIN_PATH in a):
        args.append(f"--beam_plugin={PLUGIN_PATH}")
    options = PipelineOptions(args)
    options.view_as(SetupOptions).save_main_session = False
    return options
