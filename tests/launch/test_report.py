"""The HTML report: content, self-containment, and that it really renders in headless Chromium."""
import os
import shutil

import pytest
from PIL import Image

from captionbeam.launch.report import (GalleryItem, ReportData, find_chromium, flatten_metrics, metrics_rows,
                           render_in_browser, write_report)


def _chromium_or_skip():
    browser = find_chromium()
    if browser is None:
        if shutil.which("apt-get"):
            pytest.fail("Chromium is not installed: `apt-get update && apt-get install -y chromium` "
                        "(the Makefile's test target does this)")
        pytest.skip("no Chromium and no apt-get to install it")
    return browser


def _images(tmp_path, n=3, attention=False):
    src = tmp_path / "src"
    src.mkdir()
    items = []
    colours = [(220, 30, 35), (40, 170, 60), (40, 80, 215), (245, 215, 30)]
    for i in range(n):
        p = src / f"img{i}.jpg"
        Image.new("RGB", (96, 64), colours[i % 4]).save(p)
        att = None
        if attention:
            att = src / f"img{i}-att.png"
            Image.new("RGB", (120, 40), (i * 40, 0, 0)).save(att)
        items.append(GalleryItem(image=str(p), generated=f"a <b>shape</b> number {i} & more",
                                 references=[f"reference one of {i}", f"reference two of {i}"],
                                 image_id=f"img{i}", attention=str(att) if att else None))
    return items


METRICS = {"bleu1": 0.61, "bleu4": 0.2, "coco": {"Bleu_4": 0.19, "METEOR": 0.21, "CIDEr": 0.9, "ROUGE_L": 0.45}}


def test_metrics_rows_order_and_flattening():
    assert flatten_metrics(METRICS)["CIDEr"] == pytest.approx(0.9)
    names = [n for n, _ in metrics_rows({**METRICS, "n_images": 10})]
    assert names == ["BLEU-1 (NLTK)", "BLEU-4 (NLTK)", "BLEU-4 (COCO)", "METEOR", "ROUGE-L", "CIDEr-D", "n_images"]


def test_report_is_self_contained_and_escaped(tmp_path):
    out = tmp_path / "report"
    items = _images(tmp_path, attention=True)
    path = write_report(ReportData(title="Run <1>", metrics=METRICS, gallery=items,
                                   history={"loss": [3.0, 2.0, 1.5], "val_loss": [3.1, 2.4, 2.2]}), str(out))
    text = open(path, encoding="utf-8").read()
    # captions are escaped, never injected as markup
    assert "a &lt;b&gt;shape&lt;/b&gt; number 0 &amp; more" in text and "<b>shape</b>" not in text
    assert "Run &lt;1&gt;" in text
    # every image is a relative link into images/, and the files are there
    assert str(tmp_path) not in text
    for name in ["training_curves.png", "000.jpg", "001.jpg", "002.jpg", "000-attention.png"]:
        assert f'src="images/{name}"' in text
        assert (out / "images" / name).stat().st_size > 0
    assert "CIDEr-D" in text and "0.9000" in text


def test_report_renders_in_headless_chromium(tmp_path):
    browser = _chromium_or_skip()
    items = _images(tmp_path, n=4, attention=True)
    out = tmp_path / "report"
    write_report(ReportData(title="captionbeam test report", metrics=METRICS, gallery=items,
                            history={"loss": [3.0, 2.0, 1.5], "val_loss": [3.1, 2.4, 2.2]}), str(out))
    # moved elsewhere, the directory still renders: nothing points outside it
    moved = tmp_path / "moved"
    shutil.move(str(out), str(moved))
    shutil.rmtree(tmp_path / "src")
    check = render_in_browser(str(moved), screenshot=str(tmp_path / "report.png"), chromium=browser)
    assert check.title == "captionbeam test report"
    # 4 gallery images + 4 attention maps + the training curves, all decoded by the browser
    assert (check.images_loaded, check.images_total) == (9, 9), check.dom[-2000:]
    assert check.ok
    assert "a &lt;b&gt;shape&lt;/b&gt; number 3" in check.dom
    assert check.screenshot and os.path.getsize(check.screenshot) > 10_000
    with Image.open(check.screenshot) as shot:
        assert shot.size == (1280, 1600)

    # the check can fail: a missing image file is seen by the browser
    os.remove(moved / "images" / "002.jpg")
    broken = render_in_browser(str(moved), chromium=browser)
    assert (broken.images_loaded, broken.images_total) == (8, 9)
    assert not broken.ok


def test_report_reads_gcs_images_and_marks_unreadable_ones(tmp_path, gcs_bucket):
    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "g.jpg")
    url = gcs_bucket.upload_bytes("imgs/g.jpg", (tmp_path / "g.jpg").read_bytes())
    bad = gcs_bucket.upload_bytes("imgs/bad.jpg", b"not an image")
    out = tmp_path / "r"
    write_report(ReportData(title="t", gallery=[GalleryItem(image=url, generated="green"),
                                                GalleryItem(image=bad, generated="broken")]), str(out))
    text = (out / "index.html").read_text()
    assert 'src="images/000.jpg"' in text and (out / "images" / "000.jpg").exists()
    assert "image not available" in text and not (out / "images" / "001.jpg").exists()
    assert "No metrics were computed" in text and "No training history was found" in text
