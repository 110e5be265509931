"""``captionbeam caption``: real image files through the encoder of features_spec.json and the decoder."""
import json

import numpy as np
import pytest
from PIL import Image

from captionbeam.launch.cli import main as cli
from tests.plugins.decoding import CAPTIONS, draw_images


def _run(capsys, *argv):
    rc = cli(["caption", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("caption_images")
    images, classes = draw_images(4, size=48)
    paths = []
    for i, (img, k) in enumerate(zip(images, classes)):
        p = d / f"img{i}.png" if i % 2 else d / f"img{i}.jpg"
        Image.fromarray(img).save(p, quality=95)
        paths.append(p)
    big = d / "big.jpg"                                  # another size: resized like the rest
    Image.fromarray(np.kron(images[0], np.ones((3, 2, 1), np.uint8))).save(big, quality=95)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "empty.png").write_bytes(b"")
    return d, paths, classes, big


def test_captions_files_and_reports_bad_ones(image_model_dir, image_files, capsys):
    d, paths, classes, big = image_files
    rc, out, err = _run(capsys, "--model-dir", image_model_dir["merge"], *paths, d / "broken.jpg", big,
                        d / "empty.png", d / "missing.jpg", "--json", "--batch-size", 3)
    assert rc == 0 and "5 captioned, 3 failed" in err  # finished: the failed are reported, not fatal
    rows = [json.loads(line) for line in out.splitlines()]
    ok = {r["path"]: r for r in rows if "caption" in r}
    bad = {r["path"]: r for r in rows if "error" in r}
    assert set(bad) == {str(d / "broken.jpg"), str(d / "empty.png"), str(d / "missing.jpg")}
    assert bad[str(d / "empty.png")]["error"] == "EmptyImageError" and "missing.jpg" in err
    # the decoder was fitted on these drawings' features: it names their class's caption
    for p, k in zip(paths, classes):
        assert ok[str(p)]["caption"] == CAPTIONS[k] and ok[str(p)]["image_id"] == p.stem
    assert ok[str(big)]["caption"] == CAPTIONS[classes[0]]
    rc, out, _ = _run(capsys, "--model-dir", image_model_dir["merge"], paths[0])
    assert rc == 0 and out == f"{paths[0]}\t{CAPTIONS[classes[0]]}\n"


def test_all_files_failing_exits_2(image_model_dir, image_files, capsys):
    d, *_ = image_files
    rc, out, err = _run(capsys, "--model-dir", image_model_dir["merge"], d / "broken.jpg")
    assert rc == 2 and out == "" and "broken.jpg" in err


def test_attention_plot(image_model_dir, image_files, capsys, tmp_path):
    d, paths, _, _ = image_files
    plots = tmp_path / "plots"
    rc, out, err = _run(capsys, "--model-dir", image_model_dir["attention"], paths[0], paths[1], "--max-length", 3,
                        "--beam-size", 2, "--attention-plot", plots)
    assert rc == 0, err
    assert len(out.splitlines()) == 2
    for p in paths[:2]:
        png = plots / f"{p.stem}.attention.png"
        with Image.open(png) as im:
            assert im.size[0] > 200 and im.size[1] > 100


def test_a_beam_wider_than_the_vocabulary_is_a_clear_error(image_model_dir, image_files, capsys):
    """It used to print an empty caption and exit 0."""
    _, paths, _, _ = image_files
    rc, out, err = _run(capsys, "--model-dir", image_model_dir["merge"], paths[0], "--beam-size", 100000)
    assert rc == 2 and out == ""
    assert "--beam-size 100000 is larger than the vocabulary" in err, err


def test_a_truncated_config_json_is_named(image_model_dir, image_files, capsys, tmp_path):
    import shutil
    _, paths, _, _ = image_files
    broken = tmp_path / "model"
    shutil.copytree(image_model_dir["merge"], broken)
    text = (broken / "config.json").read_text()
    (broken / "config.json").write_text(text[: len(text) // 2])
    rc, out, err = _run(capsys, "--model-dir", broken, paths[0])
    assert rc == 2 and str(broken / "config.json") in err and "not valid JSON" in err, err
