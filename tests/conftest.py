"""Shared fixtures. Each area keeps its session fixtures in ``tests/plugins/<area>.py``."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

pytest_plugins = [
    "tests.plugins.shards",
    "tests.plugins.gcs",
    "tests.plugins.data",
    "tests.plugins.training",
    "tests.plugins.decoding",
    "tests.plugins.launch",
    "tests.plugins.engines",
]
