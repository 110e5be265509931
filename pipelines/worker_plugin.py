"""Beam worker start-up hook: Beam imports this module in every SDK worker process named in
``--beam_plugin`` (:data:`pipelines.io.PLUGIN_PATH`, added by :func:`pipelines.options.pipeline_options`),
before the worker's first ``gs://`` access. Importing it is the one explicit call of
:func:`pipelines.io.use_anonymous_gcs_if_emulated` on workers: nothing else in the project imports it."""
from __future__ import annotations

from apache_beam.utils.plugin import BeamPlugin

from captionbeam.pipelines.io import use_anonymous_gcs_if_emulated

use_anonymous_gcs_if_emulated()  # the hook itself: this module exists to run it at worker start-up


class AnonymousGcsWhenEmulated(BeamPlugin):
    """The plugin class ``--beam_plugin`` names (Beam imports its module)."""
