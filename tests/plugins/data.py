"""Session fixtures for the data area.

- ``sample_dir``: the sample captioning dataset (``captionbeam sample``), 60 images of 64x64:
  ``images/*.jpg``, ``captions.txt``, ``train.txt``/``dev.txt``/``test.txt``, ``scenes.jsonl``.
"""
import pytest

SAMPLE_IMAGES = 60
SAMPLE_SIZE = 64
SAMPLE_SEED = 0


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> str:
    """Path (str) of a sample dataset written once per test session. Read-only for tests."""
    from pipelines.sample import SampleConfig, write_sample
    out = str(tmp_path_factory.mktemp("sample"))
    write_sample(SampleConfig(output=out, images=SAMPLE_IMAGES, seed=SAMPLE_SEED, size=SAMPLE_SIZE))
    return out
