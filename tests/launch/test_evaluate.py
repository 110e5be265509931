"""``captionbeam evaluate``: stream a split, decode, write predictions, score (records or a caption file)."""
import json
import os

import pytest

from captionbeam.launch.cli import main as cli
from tests.plugins.decoding import CAPTIONS


def _run(capsys, *argv):
    rc = cli(["evaluate", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.learning
@pytest.mark.parametrize("arch,beam", [("merge", 1), ("attention", 3)])
def test_evaluate_against_record_references(decoding_model_dirs, capsys, tmp_path, arch, beam):
    model_dir, data_dir, truth = decoding_model_dirs[arch]
    preds = tmp_path / "preds.jsonl"
    rc, out, err = _run(capsys, "--model-dir", model_dir, "--data", data_dir, "--split", "test", "--json",
                        "--beam-size", beam, "--batch-size", 5, "--output", preds, "--coco-metrics", "bleu,cider")
    assert rc == 0, err
    report = json.loads(out)
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert {r["image_id"]: r["caption"] for r in rows} == {i: CAPTIONS[k] for i, k in truth.items()}
    # every caption is right; BLEU-3/4 < 1 only because "the cat" has no 3- or 4-grams (NLTK counts max(1, 0))
    assert report["bleu1"] == pytest.approx(1.0) and report["bleu2"] == pytest.approx(1.0)
    from tests.plugins.learning import record_margin
    record_margin(f"evaluate[{arch}] BLEU-4", report["bleu4"], 0.8)
    assert 0.8 < report["bleu4"] < 1
    assert report["coco"]["Bleu_4"] > 0.9 and report["coco"]["CIDEr"] > 1.0
    assert report["decoding"]["images"] == 12 and report["decoding"]["beam_size"] == beam
    assert report["counts"]["reference_captions"] == 24
    assert json.loads((tmp_path / "preds.metrics.json").read_text())["bleu4"] == report["bleu4"]


def test_evaluate_against_a_caption_file_and_default_output(decoding_model_dirs, capsys, tmp_path):
    model_dir, data_dir, truth = decoding_model_dirs["inject"]
    ref = tmp_path / "Flickr8k.token.txt"
    lines = [f"{i}.jpg#0\t{CAPTIONS[k].capitalize()} ." for i, k in truth.items()]
    lines += ["other.jpg#0\tAn image that was not decoded ."]          # references may cover more images
    ref.write_text("\n".join(lines) + "\n")
    rc, out, err = _run(capsys, "--model-dir", model_dir, "--data", data_dir, "--references", ref, "--no-coco",
                        "--bleu-tokenizer", "seed")
    assert rc == 0, err
    assert "BLEU-1 1.0000  BLEU-2 1.0000" in out and "split test, beam 1: 12 images" in out
    default = os.path.join(model_dir, "eval", "test-beam1.predictions.jsonl")
    assert len(open(default).read().splitlines()) == 12


def test_evaluate_errors_name_the_flag(decoding_model_dirs, capsys, tmp_path):
    model_dir, data_dir, _ = decoding_model_dirs["merge"]
    rc, _, err = _run(capsys, "--model-dir", model_dir, "--data", data_dir, "--split", "dev", "--no-coco")
    assert rc == 2 and "--split: no 'dev' records" in err
    other_dir, other_data, _ = decoding_model_dirs["attention"]
    rc, _, err = _run(capsys, "--model-dir", model_dir, "--data", other_data, "--no-coco")
    assert rc == 2 and "holds features of shape (2, 2, 8)" in err
    rc, _, err = _run(capsys, "--model-dir", tmp_path, "--data", data_dir, "--no-coco")
    assert rc == 2 and "config.json" in err
    rc, _, err = _run(capsys, "--model-dir", model_dir, "--data", data_dir, "--beam-size", "0")
    assert rc == 2 and "--beam-size must be >= 1, got 0" in err     # exit 2 like every bad flag (was exit 1)
