"""No secrets at rest or in logs (``pipelines.redact``): credentials in Beam flags are redacted in run
records, printed command lines, stage markers and dry runs; records are written 0600."""
import json
import os
import stat

import pytest

from captionbeam.pipelines.redact import REDACTED, is_secret_name, redact, redact_args, redact_line, write_record

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize("name", ["--s3_secret_access_key", "--s3_access_key_id", "--hdfs_password",
                                  "--api-token", "--azure_connection_string_key", "s3.secretKey", "passwd",
                                  "--credentials"])
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["--max-tokens", "--keep-empty", "--runner", "--max-bytes", "--sample-size", "--project", "--region"])
def test_ordinary_names_are_kept(name):
    assert not is_secret_name(name)


def test_both_flag_forms_and_nested_records_are_redacted():
    argv = ["--runner=DirectRunner", f"--s3_secret_access_key={SECRET}", "--s3_access_key_id", "AKIDEXAMPLE",
            "--max-tokens", "20", "--hdfs_password", "--next-flag"]
    assert redact_args(argv) == ["--runner=DirectRunner", f"--s3_secret_access_key={REDACTED}", "--s3_access_key_id",
                                 REDACTED, "--max-tokens", "20", "--hdfs_password", "--next-flag"]
    record = {"config": {"s3_secret_access_key": SECRET, "token": None, "images": ["a.jpg"]},
              "pipeline_args": argv, "runs": [{"api_key": "k"}]}
    out = json.dumps(redact(record))
    assert SECRET not in out and "AKIDEXAMPLE" not in out and '"k"' not in out and "a.jpg" in out
    assert SECRET not in redact_line(f"captionbeam bulk --s3_secret_access_key '{SECRET}' --images 'x y.jpg'")


def test_records_are_owner_only_and_redacted(tmp_path):
    path = tmp_path / "runs" / "r.json"
    write_record(str(path), {"pipeline_args": [f"--s3_secret_access_key={SECRET}"]})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert SECRET not in path.read_text() and REDACTED in path.read_text()


def test_printed_stage_lines_are_redacted():
    import json
    from captionbeam.launch.command_args import stage
    from captionbeam.launch.commands import features
    s = stage(features, {"images": ["a/*.jpg"], "output": "out"}, pipeline_args=["--s3_secret_access_key", SECRET])
    assert SECRET not in s.line and REDACTED in s.line
    assert SECRET not in json.dumps(s.record()) and REDACTED in json.dumps(s.record())   # the --resume marker
    assert SECRET in s.runner.args                              # what the stage runs with is untouched


@pytest.mark.timeout(300)
def test_bulk_run_record_and_output_hold_no_secret(tmp_path, sample_dir, image_model_dir, capsys):
    """A real bulk run with an S3 credential among its Beam flags: runs/<run>.json is 0600 and names the flag
    but not the secret, and nothing printed holds it."""
    import glob
    import shutil
    from captionbeam.launch.cli import main as cli
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted(glob.glob(os.path.join(sample_dir, "images", "*.jpg")))[:2]:
        shutil.copy(p, images)
    out = tmp_path / "out"
    capsys.readouterr()
    rc = cli(["bulk", "--images", str(images / "*.jpg"), "--model-dir", image_model_dir["merge"], "--output", str(out),
              "--json", f"--s3_secret_access_key={SECRET}", "--s3_access_key_id", "AKIDEXAMPLE"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-2000:]
    records = glob.glob(str(out / "runs" / "*.json"))
    assert len(records) == 1
    text = open(records[0]).read()
    assert "--s3_secret_access_key" in text and SECRET not in text and "AKIDEXAMPLE" not in text
    assert stat.S_IMODE(os.stat(records[0]).st_mode) == 0o600
    assert SECRET not in printed.out + printed.err
