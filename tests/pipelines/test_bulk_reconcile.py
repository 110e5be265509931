"""Bulk's accounting when a runner's counters do not add up (Prism 2.78 drops a bundle's metrics when two
bundles report one it has not mapped yet): the run's own finalised files are counted instead, or, when
``matched`` or ``skipped`` was lost too, the workers' progress files per kind, each only where it agrees."""
import json

from captionbeam.pipelines.bulk import BulkResult, reconcile_with_files
from captionbeam.pipelines.bulk_rows import CaptionRow


def _write_run(tmp_path, rows: int, dead: int):
    caps = tmp_path / "captions-run-00000-of-00001.jsonl"
    caps.write_text("".join(CaptionRow(f"/i/{i}.jpg", str(i), "ab" * 32, "a dog", -1.5, "v1", "mobilenet").to_json() + "\n"
                            for i in range(rows)))
    letters = tmp_path / "dead_letters-run-00000-of-00001.jsonl"
    letters.write_text("".join(json.dumps({"path": f"/bad/{i}", "error": "x", "message": "m", "stage": "decode"}) + "\n"
                               for i in range(dead)))
    return {"captions": [str(caps)], "dead_letters": [str(letters)], "manifest": []}


def _result(files, **counters):
    return BulkResult(run="run", model_version="v1", encoder="mobilenet", seconds=1.0, files=files,
                      counters={"matched": 0, "captioned": 0, "skipped": 0, "failed": 0, **counters})


def test_lost_counters_are_recounted_from_the_files(tmp_path):
    res = _result(_write_run(tmp_path, rows=36, dead=2), matched=40, captioned=29, skipped=2, failed=2)
    assert not res.balanced
    reconcile_with_files(res)
    assert res.balanced and res.counters == {"matched": 40, "captioned": 36, "skipped": 2, "failed": 2}


def test_files_that_do_not_balance_either_are_reported_as_such(tmp_path):
    """Never a number that contradicts the files: captioned is the files' 30 even where nothing balances,
    and the result says which numbers are the runner's."""
    res = _result(_write_run(tmp_path, rows=30, dead=2), matched=40, captioned=29, skipped=2, failed=2)
    reconcile_with_files(res)
    assert not res.balanced and res.counters["captioned"] == 30 and res.runner_counters_incomplete
    assert res.sources == {"matched": "runner", "captioned": "files", "skipped": "runner", "failed": "files"}


def test_counters_that_balance_but_contradict_the_files_are_recounted(tmp_path):
    """Spark 2.78 before query_counters summed a transform's parts: matched and captioned both short by
    the tar's 10, balanced, yet 40 rows in the files: the files and the progress files win."""
    res = _result(_write_run(tmp_path, rows=40, dead=0), matched=30, captioned=30)
    assert res.balanced
    reconcile_with_files(res, {"captioned": 40}, total=None)
    assert res.balanced and res.counters == {"matched": 40, "captioned": 40, "skipped": 0, "failed": 0,
                                             "already_filed": 0}
    assert res.sources["captioned"] == "files" and res.sources["matched"] == "progress files"


def test_counters_that_agree_with_the_files_stand(tmp_path):
    res = _result(_write_run(tmp_path, rows=36, dead=2), matched=40, captioned=36, skipped=2, failed=2)
    reconcile_with_files(res, {"captioned": 1}, total=3)
    assert res.counters["matched"] == 40 and not res.runner_counters_incomplete


def test_lost_matched_and_skipped_come_from_the_progress_files(tmp_path):
    """matched and skipped lost with captioned (the files alone cannot balance): the progress files' counts,
    which agree with the rows and dead letters in the files and with the listed total, are used."""
    files = _write_run(tmp_path, rows=36, dead=1)
    res = _result(files, matched=30, captioned=29, skipped=5, failed=1, already_filed=1)
    side = {"captioned": 36, "skipped": 10, "failed": 2}
    reconcile_with_files(res, side, total=48)
    assert res.balanced and res.counters == {"matched": 48, "captioned": 36, "skipped": 10, "failed": 2,
                                             "already_filed": 1}


def test_progress_counts_without_a_kind_count_it_as_none(tmp_path):
    """No skipped and no failed image: the progress files hold no such kind (journeys3's fallback raised
    KeyError 'failed' there, which the CLI reported as the engine's failure)."""
    res = _result(_write_run(tmp_path, rows=40, dead=0), matched=30, captioned=10)
    reconcile_with_files(res, {"captioned": 40}, total=None)
    assert res.balanced and res.counters["matched"] == 40 and res.counters["failed"] == 0


def test_progress_counts_that_disagree_with_the_files_or_the_total_are_not_used(tmp_path):
    files = _write_run(tmp_path, rows=36, dead=1)
    for side, total in (({"captioned": 35, "skipped": 10, "failed": 1}, None),    # rows differ
                        ({"captioned": 36, "skipped": 10, "failed": 0}, None),    # fewer failures than letters
                        ({"captioned": 36, "skipped": 10, "failed": 1}, 50),      # not the listed total
                        (None, 47)):
        res = _result(files, matched=30, captioned=29, skipped=5, failed=1)
        reconcile_with_files(res, side, total)
        assert not res.balanced and res.counters["matched"] == 30, side
