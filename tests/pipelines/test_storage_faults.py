"""pipelines.storage_faults: the storage deadline a bucket output's lease watches (parsing only; the
endpoint-down behaviour itself runs in tests/faults/test_storage.py against a killed emulator)."""
import pytest

from captionbeam.pipelines.storage_faults import DEFAULT_STORAGE_DEADLINE_S, storage_deadline_s


def test_the_storage_deadline_defaults_and_reads_the_environment():
    assert storage_deadline_s({}) == DEFAULT_STORAGE_DEADLINE_S
    assert storage_deadline_s({"CAPTIONBEAM_STORAGE_DEADLINE_S": " "}) == DEFAULT_STORAGE_DEADLINE_S
    assert storage_deadline_s({"CAPTIONBEAM_STORAGE_DEADLINE_S": "20"}) == 20.0


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "nan", "inf"])
def test_a_bad_storage_deadline_is_named(raw):
    with pytest.raises(ValueError, match="CAPTIONBEAM_STORAGE_DEADLINE_S"):
        storage_deadline_s({"CAPTIONBEAM_STORAGE_DEADLINE_S": raw})
