"""Runner profiles and --dry-run: resolved options per profile, flag merging, the equivalent command
line (round trip), bad profiles failing fast, TF_CONFIG for multi-worker training, and the local
profile really running a Beam pipeline."""
import json
import os
import shlex
import subprocess
import sys
import textwrap

import pytest

from captionbeam.launch import cli
from captionbeam.launch.beam_options import merge_flags
from captionbeam.launch.beam_options import resolved_options
from captionbeam.launch.profiles import DEFAULT_PROFILES_FILE, load_profiles, profile_args, profile_env, profile_train_args
from captionbeam.launch.tf_config import tf_config

BULK = ["bulk", "--images", "gs://b/photos/*.jpg", "--model-dir", "gs://b/model", "--output", "gs://b/out"]


@pytest.fixture
def features_argv(tmp_path):
    """A features command whose plan passes (a dry run plans: its images must exist); the encoder's input
    size not given."""
    from PIL import Image
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "photos" / "a.jpg")
    return ["features", "--images", str(tmp_path / "photos" / "*.jpg"), "--encoder", "mobilenet", "--weights", "none",
            "--output", str(tmp_path / "out")]


def dry_run(capsys, argv):
    rc = cli.main(list(argv) + ["--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    text, _, line = out.partition("equivalent command line (nothing submitted):")
    return json.loads(text), line.strip()


def beam_flags_of(line):
    """The Beam flags of an equivalent command line (what follows the command's own flags)."""
    return [t for t in shlex.split(line) if t.startswith("--") and "=" in t
            and t.split("=")[0] not in ("--images", "--model-dir", "--output")]


EXPECTED = {
    "local": {"runner": "DirectRunner", "direct_running_mode": "multi_processing", "direct_num_workers": 2},
    "dataflow": {"runner": "DataflowRunner", "region": "us-central1", "setup_file": "./setup.py",
                 "experiments": ["use_runner_v2"], "machine_type": "n1-standard-4"},
    "dataflow-gpu": {"runner": "DataflowRunner", "machine_type": "n1-standard-8",
                     "dataflow_service_options": ["worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"],
                     "number_of_worker_harness_threads": 1,
                     "experiments": ["use_runner_v2", "no_use_multiple_sdk_containers"]},
    "flink": {"runner": "FlinkRunner", "flink_master": "<your-flink-jobmanager-host>:8081",
              "environment_type": "DOCKER", "parallelism": 8},
    "spark": {"runner": "SparkRunner", "spark_master_url": "spark://<your-spark-master-host>:7077",
              "environment_type": "DOCKER"},
    "flink-local": {"runner": "FlinkRunner", "flink_master": "[local]", "environment_type": "LOOPBACK",
                    "parallelism": 2, "flink_job_server_jar": "{cache}/flink/job-server.jar"},
    "spark-local": {"runner": "SparkRunner", "spark_master_url": "local[2]", "environment_type": "LOOPBACK",
                    "spark_job_server_jar": "{cache}/spark/job-server.jar"},
    "prism": {"runner": "PrismRunner", "environment_type": "LOOPBACK", "prism_location": "{cache}/prism/prism"},
}


@pytest.fixture
def engines_cache(tmp_path, monkeypatch):
    """An engines cache holding (empty) stand-ins for the jars and the binary: what the profiles resolve to."""
    from captionbeam.launch.engines import ARTIFACTS, ENGINES_ENV
    cache = tmp_path / "engines"
    for rel in ARTIFACTS.values():
        (cache / rel).parent.mkdir(parents=True, exist_ok=True)
        (cache / rel).write_bytes(b"")
    monkeypatch.setenv(ENGINES_ENV, str(cache))
    return str(cache)


@pytest.mark.parametrize("profile", sorted(EXPECTED))
def test_dry_run_resolves_each_profile_and_round_trips(capsys, engines_cache, profile, features_argv):
    report, line = dry_run(capsys, features_argv + ["--profile", profile])
    opts = report["pipeline_options"]
    for key, value in EXPECTED[profile].items():
        value = value.replace("{cache}", engines_cache) if isinstance(value, str) else value
        assert opts[key] == value, (key, opts)
    assert report["profile"] == profile
    # the command's own options are resolved too, defaults included
    assert report["command_options"]["images"] == [features_argv[2]]
    assert report["command_options"]["batch_size"] == 32
    assert report["command_options"]["image_size"] is None  # not given: the encoder's own
    # the equivalent command line: no profile, no dry-run, every option once
    tokens = shlex.split(line)
    assert tokens[:2] == ["captionbeam", "features"]
    assert "--profile" not in tokens and "--dry-run" not in tokens
    keys = [t.split("=")[0] for t in beam_flags_of(line)]
    repeatable = {"--experiments", "--dataflow_service_options", "--beam_plugin", "--job_server_jvm_properties"}
    assert len([k for k in keys if k not in repeatable]) == len({k for k in keys if k not in repeatable})
    # ... and running it (dry) without the profile resolves to exactly the same options
    again, line2 = dry_run(capsys, tokens[1:])
    assert again["pipeline_options"] == opts
    assert line2 == line


def test_gpu_only_for_features_and_bulk(capsys):
    profiles = load_profiles(DEFAULT_PROFILES_FILE)
    for job in ("features", "bulk"):
        assert any("worker_accelerator" in f for f in profile_args(profiles, "dataflow-gpu", job))
    captions = profile_args(profiles, "dataflow-gpu", "captions")
    assert not any("worker_accelerator" in f for f in captions)
    assert any(f.startswith("--sdk_container_image=") for f in captions)
    # extends: dataflow-gpu inherits dataflow's project/temp_location, and drops its setup_file
    assert "--temp_location=gs://<your-bucket>/tmp" in captions
    assert not any(f.startswith("--setup_file") for f in captions)


def test_explicit_flags_override_profile_without_duplicates(capsys, features_argv):
    report, line = dry_run(capsys, features_argv + ["--profile", "dataflow", "--region", "europe-west4",
                                           "--experiments=shuffle_mode=service", "--experiments=use_runner_v2",
                                           "--project=my-project"])
    opts = report["pipeline_options"]
    assert opts["region"] == "europe-west4" and opts["project"] == "my-project"
    assert opts["experiments"] == ["use_runner_v2", "shuffle_mode=service"]
    flags = beam_flags_of(line)
    assert flags.count("--region=europe-west4") == 1 and not any(f == "--region=us-central1" for f in flags)
    assert flags.count("--experiments=use_runner_v2") == 1
    # placeholders left in the example profile are called out
    assert any("<your-bucket>" in w for w in report["warnings"])


def test_merge_flags_rules():
    merged = merge_flags(["--runner=DirectRunner", "--direct_num_workers", "2", "--experiments=a", "--save_main_session"],
                         ["--direct_num_workers=4", "--experiments", "b", "--experiments=a", "--no_save_main_session"])
    assert merged == ["--runner=DirectRunner", "--experiments=a", "--direct_num_workers=4", "--experiments=b",
                      "--no_save_main_session"]
    assert resolved_options(merged)["direct_num_workers"] == 4


def test_bad_profiles_fail_fast_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(BULK + ["--profile", "nope", "--dry-run"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--profile" in err and "unknown profile 'nope'" in err and "dataflow-gpu" in err

    bad = tmp_path / "profiles.yaml"
    bad.write_text("mine:\n  all:\n    runner: DirectRunner\n    not_a_beam_option: 3\n")
    with pytest.raises(SystemExit):
        cli.main(BULK + ["--profile", "mine", "--profiles-file", str(bad), "--dry-run"])
    assert "not_a_beam_option" in capsys.readouterr().err

    cyc = tmp_path / "cycle.yaml"
    cyc.write_text("a: {extends: b}\nb: {extends: a}\n")
    with pytest.raises(ValueError, match="cycle"):
        load_profiles(str(cyc))
    with pytest.raises(SystemExit):
        cli.main(BULK + ["--dry-run", "--no_such_beam_flag=1"])
    assert "--no_such_beam_flag" in capsys.readouterr().err


def test_multiworker_profile_and_tf_config():
    profiles = load_profiles(DEFAULT_PROFILES_FILE)
    assert profile_train_args(profiles, "multiworker")[:1] == ["--strategy=multiworker"]
    env = json.loads(profile_env(profiles, "multiworker")["TF_CONFIG"])
    assert env["task"] == {"type": "worker", "index": 0} and len(env["cluster"]["worker"]) == 2

    cfg = tf_config(["w0:2222", "w1:2222", "w2:2222"], 2)
    assert cfg == {"cluster": {"worker": ["w0:2222", "w1:2222", "w2:2222"]}, "task": {"type": "worker", "index": 2}}
    with pytest.raises(ValueError, match="--index"):
        tf_config(["w0:1"], 1)
    with pytest.raises(ValueError, match="host:port"):
        tf_config(["w0"], 0)
    # a Kubernetes indexed Job gives each pod JOB_COMPLETION_INDEX; the helper turns it into TF_CONFIG
    out = subprocess.run([sys.executable, "-m", "captionbeam.launch.profiles", "tf-config", "--workers", "t-0.t:2222,t-1.t:2222"],
                         env={**os.environ, "JOB_COMPLETION_INDEX": "1"}, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"cluster": {"worker": ["t-0.t:2222", "t-1.t:2222"]},
                                      "task": {"type": "worker", "index": 1}}


def test_local_profile_really_runs_a_pipeline(tmp_path):
    """The local profile's resolved options drive a real multi-process DirectRunner pipeline."""
    profiles = load_profiles(DEFAULT_PROFILES_FILE)
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import apache_beam as beam
        from captionbeam.pipelines.options import pipeline_options
        from captionbeam.launch.beam_options import merge_flags
        args = merge_flags({profile_args(profiles, 'local', 'features')!r})
        with beam.Pipeline(options=pipeline_options(args)) as p:
            (p | beam.Create(range(200)) | beam.Map(lambda x: (x % 7, x)) | beam.CombinePerKey(sum)
               | beam.MapTuple(lambda k, v: f"{{k}} {{v}}") | beam.io.WriteToText({str(out)!r}))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, capture_output=True)
    rows = {}
    for f in tmp_path.glob("out*"):
        for line in f.read_text().splitlines():
            k, v = line.split()
            rows[int(k)] = int(v)
    assert rows == {k: sum(x for x in range(200) if x % 7 == k) for k in range(7)}
