"""``--dry-run`` of every command: the command's own plan (``config_from_args`` -> ``plan`` ->
``summary_lines()``) printed in the report, nothing run and nothing written, exit 0; a plan that fails is
one line and exit 2. And of an engine profile when the engines are not fetched: a warning naming the
engine and ``make engines``, exit 0, the report still resolved; the same command run for real fails with
exit 2 naming the engine (nothing written)."""
import json
import os

import pytest

from captionbeam.launch import cli

ENGINE_PROFILES = (("flink-local", "flink"), ("spark-local", "spark"), ("prism", "prism"),
                   ("flink", "flink"), ("spark", "spark"))
ENCODER = ["--encoder", "mobilenet", "--weights", "none", "--image-size", "32"]


@pytest.fixture
def empty_engines_cache(tmp_path, monkeypatch):
    from captionbeam.launch.engines import ENGINES_ENV
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv(ENGINES_ENV, str(cache))
    return cache


@pytest.fixture
def inputs(tmp_path):
    """Two small images, their captions (Flickr8k token format), a split file and predictions."""
    from PIL import Image
    d = tmp_path / "in"
    (d / "images").mkdir(parents=True)
    for name, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        Image.new("RGB", (16, 16), colour).save(d / "images" / f"{name}.jpg")
    (d / "captions.txt").write_text("a.jpg#0\ta red square\nb.jpg#0\ta blue square\n")
    (d / "train.txt").write_text("a.jpg\nb.jpg\n")
    (d / "predictions.jsonl").write_text('{"image_id": "a", "caption": "a red square"}\n'
                                         '{"image_id": "b", "caption": "a square"}\n')
    return d


def _argv(command, d, out, request):
    """A command line of ``command`` whose plan passes: inputs under ``d``, outputs under ``out``."""
    images, caps = str(d / "images" / "*.jpg"), str(d / "captions.txt")
    if command == "evaluate":
        from tests.plugins.decoding import write_decoding_data
        data, _ = write_decoding_data(str(d / "data"), (8,), n=4, shards=1)
        return ["evaluate", "--model-dir", str(d / "model"), "--data", data, "--output", str(out / "p.jsonl")]
    if command == "bulk":
        model = request.getfixturevalue("image_model_dir")["merge"]
        return ["bulk", "--images", images, "--model-dir", model, "--output", str(out / "bulk")]
    return {
        "sample": ["sample", "--output", str(out / "sample"), "--images", "4"],
        "pack": ["pack", "--images", images, "--output", str(out / "pack"), "--format", "tar"],
        "features": ["features", "--images", images, "--output", str(out / "f"), *ENCODER],
        "captions": ["captions", "--captions", caps, "--split", f"train={d / 'train.txt'}", "--output", str(out / "c")],
        "train": ["train", "--data", str(d / "data"), "--model-dir", str(out / "m"), "--epochs", "2"],
        "caption": ["caption", "--model-dir", str(d / "model"), str(d / "images" / "a.jpg")],
        "score": ["score", "--predictions", str(d / "predictions.jsonl"), "--references", caps],
        "export": ["export", "--model-dir", str(d / "model"), "--output", str(out / "export")],
        "ensemble": ["ensemble", "--member", str(d / "m1"), "--member", str(d / "m2"), "--output", str(out / "e")],
        "retrain": ["retrain", "--root", str(out / "root"), "--images", images, "--captions", caps],
        "run": ["run", "--workdir", str(out / "run")],
    }[command]


def _files(root):
    return sorted(os.path.join(p, n) for p, dirs, names in os.walk(root) for n in dirs + names)


def _report(text):
    body, _, line = text.partition("equivalent command line (nothing submitted):")
    return json.loads(body), line.strip()


@pytest.mark.parametrize("command", [name for name, _ in cli.COMMANDS])
def test_dry_run_of_every_command_prints_its_plan_and_writes_nothing(command, inputs, tmp_path, capsys, request):
    if command == "profiles":       # a tool that only prints (list | show | tf-config): no plan, no --dry-run
        assert not hasattr(cli._module_for(command), "plan")
        return
    argv = _argv(command, inputs, tmp_path / "out", request)
    before = _files(tmp_path)
    rc = cli.main(["--log-level", "WARNING", *argv, "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    report, line = _report(out)
    assert report["command"] == command and line.startswith(f"captionbeam {command} ")
    assert isinstance(report["plan"], list) and report["plan"] and all(isinstance(p, str) for p in report["plan"])
    assert _files(tmp_path) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,error", [
    (["features", "--images", "{in}/*.png", "--output", "{out}/f", *ENCODER], "--images: no file matches"),
    (["evaluate", "--model-dir", "{in}/model", "--data", "{in}/no-data"], "--data: directory not found"),
    (["score", "--predictions", "{in}/none.jsonl", "--references", "{in}/captions.txt"], "none.jsonl"),
])
def test_dry_run_of_a_plan_that_fails_is_one_line_and_exit_2(argv, error, inputs, tmp_path, capsys):
    argv = [a.format(**{"in": inputs, "out": tmp_path / "out"}) for a in argv]
    assert cli.main(["--log-level", "WARNING", *argv, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"captionbeam {argv[0]}: error: ") and error in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("profile,engine", ENGINE_PROFILES)
def test_dry_run_of_an_engine_profile_warns_when_engines_are_not_fetched(tmp_path, capsys, empty_engines_cache,
                                                                         inputs, profile, engine):
    out = tmp_path / "out"
    argv = ["features", "--images", str(inputs / "images" / "*.jpg"), *ENCODER, "--output", str(out),
            "--profile", profile]
    assert cli.main(argv + ["--dry-run"]) == 0
    report, line = _report(capsys.readouterr().out)
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
