"""Learning tests' seed and margins.

A learning test (one whose assertion depends on what a model learnt) is marked ``@pytest.mark.learning``.

``learning_seed(default)``: the seed a learning test uses for its data and training: ``default`` plus
``CAPTIONBEAM_TEST_SEED`` (0 when unset, so a plain run is the committed configuration).
``tests/sweep_learning.py`` runs ``pytest -m learning`` with ``CAPTIONBEAM_TEST_SEED=1..10`` and once with
``TF_ENABLE_ONEDNN_OPTS=0`` to check that their margins hold across seeds and CPU kernels
(docs/reproducibility.md).

``record_margin(name, value, bound)``: appends ``{"test", "value", "bound", "margin", "seed"}`` to the
JSON-lines file named by ``CAPTIONBEAM_TEST_MARGINS`` (nothing when unset), so a sweep can report how
far each assertion was from failing; the test still asserts ``value > bound`` itself.
"""
import json
import os

SEED_ENV = "CAPTIONBEAM_TEST_SEED"
MARGINS_ENV = "CAPTIONBEAM_TEST_MARGINS"


def seed_offset() -> int:
    text = os.environ.get(SEED_ENV, "0")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{SEED_ENV}={text!r}: expected an integer") from None


def learning_seed(default: int) -> int:
    return default + seed_offset()


def record_margin(name: str, value: float, bound: float) -> None:
    path = os.environ.get(MARGINS_ENV)
    if not path:
        return
    row = {"test": name, "value": round(float(value), 6), "bound": round(float(bound), 6),
           "margin": round(float(value) - float(bound), 6), "seed": seed_offset(),
           "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
