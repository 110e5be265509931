"""pipelines.options: every job's Pipeline runs DirectRunner in Beam's Python engines, never via Prism."""
import logging

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from captionbeam.pipelines.options import new_pipeline


@pytest.mark.parametrize("args", [[], ["--runner=DirectRunner"]])
def test_direct_runner_never_tries_prism(args, caplog):
    """A plain Create | Map pipeline is one Beam's DirectRunner would hand to Prism (downloading its
    binary first); ours runs it in the FnApiRunner and gets the right result."""
    caplog.set_level(logging.INFO, logger="apache_beam.runners.direct.direct_runner")
    with new_pipeline(args) as p:
        out = p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * 10)
        assert_that(out, equal_to([10, 20, 30]))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "Prism" not in messages, messages
    from apache_beam.runners.direct.direct_runner import DirectRunner
    assert isinstance(p.runner, DirectRunner)


def test_other_runners_are_left_to_beam():
    p = new_pipeline(["--runner=PrismRunner"])
    assert type(p.runner).__name__ == "PrismRunner"
