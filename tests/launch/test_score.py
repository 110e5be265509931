"""``captionbeam score``: formats, JSON output, COCO metrics equal to pycocoevalcap run directly, policies."""
import contextlib
import csv
import io
import json
import random
import re
import warnings

import pytest

from captionbeam.launch.cli import main as cli

WORDS = ("a dog cat man woman child runs jumps sits on the in grass water street red blue ball "
         "playing with two people beach snow").split()


def _corpus(n_images=12, seed=3):
    rng = random.Random(seed)
    refs, preds = {}, {}
    for k in range(n_images):
        iid = f"{1000 + k}_img"
        base = [rng.choice(WORDS) for _ in range(rng.randint(5, 10))]
        caps = []
        for _ in range(5):
            c = list(base)
            for _ in range(rng.randint(0, 3)):
                c[rng.randrange(len(c))] = rng.choice(WORDS)
            text = " ".join(c)
            caps.append(text[0].upper() + text[1:] + rng.choice([" .", ".", "", " !"]))
        refs[iid] = caps
        hyp = list(base)
        for _ in range(rng.randint(0, 4)):
            hyp[rng.randrange(len(hyp))] = rng.choice(WORDS)
        preds[iid] = " ".join(hyp[: rng.randint(3, len(hyp))])
    return refs, preds


def _write_refs(tmp_path, refs):
    """The same references in all four formats."""
    paths = {}
    p = tmp_path / "Flickr8k.token.txt"
    p.write_text("".join(f"{i}.jpg#{n}\t{c}\n" for i, cs in refs.items() for n, c in enumerate(cs)))
    paths["flickr8k"] = p
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "caption"])
    for i, cs in refs.items():
        for c in cs:
            w.writerow([f"{i}.jpg", c])
    p = tmp_path / "captions.txt"
    p.write_text(buf.getvalue())
    paths["kaggle"] = p
    images = [{"id": k, "file_name": f"{i}.jpg"} for k, i in enumerate(refs)]
    anns = [{"id": 100 * k + n, "image_id": k, "caption": c} for k, cs in enumerate(refs.values()) for n, c in enumerate(cs)]
    p = tmp_path / "captions_coco.json"
    p.write_text(json.dumps({"images": images, "annotations": anns}))
    paths["coco"] = p
    p = tmp_path / "refs.jsonl"
    p.write_text("".join(json.dumps({"image_id": i, "captions": cs}) + "\n" for i, cs in refs.items()))
    paths["jsonl"] = p
    return paths


def _write_preds(path, preds):
    path.write_text("".join(json.dumps({"image_id": i, "caption": c}, ensure_ascii=False) + "\n"
                            for i, c in preds.items()), encoding="utf-8")
    return path


def _run(capsys, *argv):
    rc = cli(["score", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def _direct_pycocoevalcap(refs, preds, meteor):
    """pycocoevalcap used the standard way (coco-caption's COCOEvalCap, minus the COCO api objects)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in cs] for i, cs in refs.items()})
    res = tok.tokenize({i: [{"caption": preds[i]}] for i in refs})
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for scorer, names in [(Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (meteor, "METEOR"),
                              (Rouge(), "ROUGE_L"), (Cider(), "CIDEr")]:
            score, _ = scorer.compute_score(gts, res)
            if isinstance(names, list):
                out.update({k: float(v) for k, v in zip(names, score)})
            else:
                out[names] = float(score)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("score")
    refs, preds = _corpus()
    return refs, preds, _write_refs(tmp, refs), _write_preds(tmp / "preds.jsonl", preds)


@pytest.fixture(scope="module")
def coco_both_ways(corpus):
    """pycocoevalcap run directly and through model.coco_metrics, sharing one METEOR JVM (15-30 s to start)."""
    from pycocoevalcap.meteor.meteor import Meteor
    from captionbeam.model.coco_metrics import _close_meteor, coco_scores
    refs, preds, _, _ = corpus
    meteor = Meteor()
    try:
        direct = _direct_pycocoevalcap(refs, preds, meteor)
        wrapped = coco_scores(refs, preds, meteor=meteor)
    finally:
        _close_meteor(meteor)
    return direct, wrapped


def test_coco_wrapper_equals_pycocoevalcap_run_directly(coco_both_ways):
    direct, wrapped = coco_both_ways
    assert set(wrapped.scores) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}
    assert wrapped.scores == direct           # same floats, not just close
    assert 0.05 < direct["CIDEr"] and 0.05 < direct["METEOR"] < 1
    assert len(wrapped.per_image) == 12 and all(len(v) == 7 for v in wrapped.per_image.values())


def test_json_equals_nltk_and_pycocoevalcap(corpus, coco_both_ways, capsys, tmp_path):
    refs, preds, paths, pred_path = corpus
    direct, _ = coco_both_ways
    per_image = tmp_path / "per_image.jsonl"
    # METEOR (a JVM start) is covered by the test above; the CLI runs the other scorers.
    rc, out, _ = _run(capsys, "--predictions", pred_path, "--references", paths["flickr8k"], "--json",
                      "--per-image", per_image, "--coco-metrics", "bleu,rouge,cider")
    assert rc == 0
    report = json.loads(out)                          # stdout is exactly one JSON object
    from nltk.translate.bleu_score import corpus_bleu
    list_refs = [[c.lower().split() for c in refs[i]] for i in preds]
    hyps = [preds[i].lower().split() for i in preds]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in range(1, 5):
            assert report[f"bleu{n}"] == pytest.approx(corpus_bleu(list_refs, hyps, weights=(1 / n,) * n), abs=1e-9)
    assert set(report["coco"]) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    for k, v in report["coco"].items():
        assert v == direct[k], k
    assert report["counts"]["images"] == len(preds) and report["counts"]["reference_captions"] == 5 * len(preds)
    rows = [json.loads(line) for line in per_image.read_text().splitlines()]
    assert [r["image_id"] for r in rows] == list(preds) and all("CIDEr" in r and "ROUGE_L" in r for r in rows)


def test_the_table_names_cider_d(corpus, capsys):
    """The product prints CIDEr-D (what pycocoevalcap's "CIDEr" computes); the JSON keeps the key."""
    _, _, paths, pred_path = corpus
    rc, out, _ = _run(capsys, "--predictions", pred_path, "--references", paths["jsonl"], "--coco-metrics", "cider")
    assert rc == 0 and re.search(r"CIDEr-D \d\.\d{4}", out) and not re.search(r"CIDEr \d", out), out


@pytest.mark.parametrize("fmt", ["kaggle", "coco", "jsonl"])
def test_reference_formats_give_the_same_scores(corpus, capsys, fmt):
    _, _, paths, pred_path = corpus
    scores = []
    for path in (paths["flickr8k"], paths[fmt]):
        rc, out, _ = _run(capsys, "--predictions", pred_path, "--references", path, "--json",
                          "--coco-metrics", "bleu,cider")
        assert rc == 0
        scores.append(json.loads(out))
    assert scores[0]["bleu4"] == scores[1]["bleu4"] and scores[0]["coco"] == scores[1]["coco"]
    assert set(scores[0]["coco"]) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"}


def test_tutorial_variant_flag(corpus, capsys):
    _, _, paths, pred_path = corpus
    rc, out, _ = _run(capsys, "--predictions", pred_path, "--references", paths["jsonl"], "--json", "--no-coco",
                      "--bleu-variant", "tutorial")
    assert rc == 0
    report = json.loads(out)
    assert report["bleu"]["weights"]["bleu3"] == [0.3, 0.3, 0.3, 0] and "coco" not in report
    rc, out, _ = _run(capsys, "--predictions", pred_path, "--references", paths["jsonl"], "--json", "--no-coco")
    assert json.loads(out)["bleu3"] != report["bleu3"] and json.loads(out)["bleu4"] == report["bleu4"]


def test_table_output(corpus, capsys):
    _, _, paths, pred_path = corpus
    rc, out, _ = _run(capsys, "--predictions", pred_path, "--references", paths["kaggle"], "--coco-metrics", "rouge")
    assert rc == 0
    assert "images scored: 12" in out and "BLEU-4" in out and "ROUGE_L" in out


def test_missing_ids_error_then_allow_missing_and_image_ids(corpus, capsys, tmp_path):
    refs, preds, paths, _ = corpus
    some = dict(list(preds.items())[:8])
    some["999_unknown"] = "a dog"
    p = _write_preds(tmp_path / "partial.jsonl", some)
    rc, out, err = _run(capsys, "--predictions", p, "--references", paths["flickr8k"], "--no-coco")
    assert rc == 2 and out == ""
    assert "1 of 9 predicted images have no reference captions ('999_unknown')" in err
    assert "4 of 12 referenced images have no prediction" in err and "--allow-missing" in err
    rc, out, err = _run(capsys, "--predictions", p, "--references", paths["flickr8k"], "--no-coco", "--json",
                        "--allow-missing")
    report = json.loads(out)
    assert rc == 0 and report["counts"]["images"] == 8
    assert report["counts"]["missing_references"] == 1 and report["counts"]["missing_predictions"] == 4
    split = tmp_path / "split.txt"
    split.write_text("".join(f"{i}.jpg\n" for i in list(preds)[:8]))
    rc, out, err = _run(capsys, "--predictions", p, "--references", paths["flickr8k"], "--no-coco", "--json",
                        "--image-ids", split)
    assert rc == 0 and json.loads(out)["counts"]["outside_image_ids"] == 1
    assert json.loads(out)["bleu4"] == report["bleu4"]


def test_empty_and_unicode_predictions_are_scored(capsys, tmp_path):
    refs = {"a": ["Un café à Zürich.", "a café"], "b": ["Two\rpeople\u2028walking on snow", "people walking"],
            "c": ["a dog runs"], "d": ["日本 の 犬 が 走る"]}
    preds = {"a": "un café", "b": "", "c": "   ", "d": "日本 の 犬"}
    ref_path = tmp_path / "refs.jsonl"
    ref_path.write_text("".join(json.dumps({"image_id": i, "captions": c}, ensure_ascii=False) + "\n"
                                for i, c in refs.items()), encoding="utf-8")
    p = _write_preds(tmp_path / "p.jsonl", preds)
    rc, out, err = _run(capsys, "--predictions", p, "--references", ref_path, "--json", "--coco-metrics",
                        "bleu,rouge,cider", "--per-image", tmp_path / "per.jsonl")
    assert rc == 0, err
    report = json.loads(out)
    assert report["counts"]["empty_predictions"] == 2 and report["bleu1"] > 0
    per = {json.loads(line)["image_id"]: json.loads(line) for line in (tmp_path / "per.jsonl").read_text().splitlines()}
    # The line separators inside b's reference did not shift the captions onto other images.
    assert per["a"]["CIDEr"] > 0 and per["d"]["CIDEr"] > 0 and per["b"]["CIDEr"] == 0


@pytest.mark.parametrize("content,message", [
    (b'{"image_id": "a", "caption": "x"}\n{"image_id": "a", "caption": "y"}\n', "predicted twice"),
    (b'{"image_id": "a", "caption": "caf\xe9"}\n', "not UTF-8"),
    (b'{"image_id": "a", "text": "x"}\n', "expected {\"image_id\""),
    (b'', "no predictions"),
])
def test_bad_predictions_fail_clearly(capsys, tmp_path, content, message):
    refs = tmp_path / "refs.jsonl"
    refs.write_text('{"image_id": "a", "captions": ["a dog"]}\n')
    p = tmp_path / "p.jsonl"
    p.write_bytes(content)
    rc, out, err = _run(capsys, "--predictions", p, "--references", refs, "--no-coco")
    assert rc == 2 and message in err and "Traceback" not in err


def test_missing_file_and_bad_flag(capsys, tmp_path):
    rc, _, err = _run(capsys, "--predictions", tmp_path / "nope.jsonl", "--references", tmp_path / "r.txt")
    assert rc == 2 and "nope.jsonl" in err
    with pytest.raises(SystemExit):
        cli(["score", "--predictions", "p", "--references", "r", "--coco-metrics", "bleu,spice"])
    assert "unknown scorer(s) ['spice']" in capsys.readouterr().err


def test_without_java_coco_fails_clearly_and_no_coco_works(corpus, capsys, monkeypatch, tmp_path):
    _, _, paths, pred_path = corpus
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    rc, out, err = _run(capsys, "--predictions", pred_path, "--references", paths["jsonl"])
    assert rc == 2 and "Java runtime" in err and "--no-coco" in err
    rc, out, err = _run(capsys, "--predictions", pred_path, "--references", paths["jsonl"], "--no-coco", "--json")
    assert rc == 0 and "bleu4" in json.loads(out)
