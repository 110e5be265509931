"""``--dry-run`` of an engine profile when the engines are not fetched: a warning naming the engine
and ``make engines``, exit 0, the report still resolved; the same command run for real fails with
exit 2 naming the engine (nothing written)."""
import json

import pytest

from captionbeam.launch import cli

ENGINE_PROFILES = (("flink-local", "flink"), ("spark-local", "spark"), ("prism", "prism"),
                   ("flink", "flink"), ("spark", "spark"))


@pytest.fixture
def empty_engines_cache(tmp_path, monkeypatch):
    from captionbeam.launch.engines import ENGINES_ENV
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv(ENGINES_ENV, str(cache))
    return cache


@pytest.mark.parametrize("profile,engine", ENGINE_PROFILES)
def test_dry_run_of_an_engine_profile_warns_when_engines_are_not_fetched(tmp_path, capsys, empty_engines_cache,
                                                                         profile, engine):
    out = tmp_path / "out"
    argv = ["bulk", "--images", str(tmp_path / "photos" / "*.jpg"), "--model-dir", str(tmp_path / "model"),
            "--output", str(out), "--profile", profile]
    assert cli.main(argv + ["--dry-run"]) == 0
    text, _, line = capsys.readouterr().out.partition("equivalent command line (nothing submitted):")
    report = json.loads(text)
    missing = [w for w in report["warnings"] if w.startswith(f"{engine}: ") and "make engines" in w]
    assert len(missing) == 1 and str(empty_engines_cache) in missing[0], report["warnings"]
    jar = {"flink": "flink_job_server_jar", "spark": "spark_job_server_jar", "prism": "prism_location"}[engine]
    assert report["pipeline_options"][jar].startswith(str(empty_engines_cache))
    assert f"--{jar}={empty_engines_cache}" in line

    with pytest.raises(SystemExit) as e:          # for real: the same flags fail before anything runs
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"{engine}: " in err and "is missing" in err and "make engines" in err, err
    assert not out.exists()
