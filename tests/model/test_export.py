"""``captionbeam export``: one SavedModel, loaded in a fresh interpreter that cannot import this project."""
import io
import json
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
from PIL import Image

from captionbeam.launch.cli import main as cli
from captionbeam.model.export import EXPORT_FORMAT
from tests.plugins.decoding import CAPTIONS, draw_images

LOADER = r"""
import json, sys
sys.path.append(sys.argv[1])          # site-packages only: no .pth files, so no editable captionbeam
try:
    import captionbeam.model.decode
    print("PROJECT-IMPORTABLE")
except ImportError:
    pass
import tensorflow as tf
m = tf.saved_model.load(sys.argv[2])
images = tf.constant([open(p, "rb").read() for p in sys.argv[3:]])
out = m.signatures["serving_default"](images=images)
feats = tf.zeros([2] + list(m.signatures["caption_features"].structured_input_signature[1]["features"].shape[1:]))
f_out = m.signatures["caption_features"](features=feats)
print(json.dumps({
    "captions": [c.decode() for c in out["captions"].numpy()], "log_probs": out["log_probs"].numpy().tolist(),
    "valid": out["valid"].numpy().tolist(), "feature_captions": [c.decode() for c in f_out["captions"].numpy()],
    "feature_log_probs": f_out["log_probs"].numpy().tolist(),
    "project_modules": sorted(k for k in sys.modules if k.split(".")[0] == "captionbeam"),
}))
"""


@pytest.fixture(scope="module")
def exported(exported_model):
    return exported_model


def test_export_serves_image_bytes_without_the_project(exported, image_model_dir, tmp_path):
    images, classes = draw_images(4, size=32, seed=3)      # the encoder's own size: no resize differences
    paths = []
    for i, img in enumerate(images):
        p = tmp_path / (f"x{i}.png" if i % 2 else f"x{i}.bmp")
        Image.fromarray(img).save(p)
        paths.append(str(p))
    big = tmp_path / "big.jpg"
    Image.fromarray(np.kron(images[1], np.ones((4, 3, 1), np.uint8))).save(big, quality=95)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", LOADER, sysconfig.get_paths()["purelib"], str(exported),
                           *paths, str(big), str(bad)], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PROJECT-IMPORTABLE" not in proc.stdout
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["project_modules"] == []
    assert result["captions"][:4] == [CAPTIONS[k] for k in classes]
    assert result["captions"][4] == CAPTIONS[classes[1]]           # resized in the graph, same caption
    assert result["valid"] == [True] * 5 + [False] and result["captions"][5] == ""
    # the same numbers as the Captioner in this process (same beam search, same weights)
    from captionbeam.model.captioner import Captioner
    cap = Captioner.load(image_model_dir["merge"], beam_size=2)
    mine = cap.caption_images(images)
    np.testing.assert_allclose(result["log_probs"][:4], [r.log_prob for r in mine], atol=1e-3)
    zeros = cap.caption_features(np.zeros([2] + list(cap.config.feature_shape), np.float32))
    assert result["feature_captions"] == [r.caption for r in zeros]


def test_export_metadata_and_overwrite_guard(exported, image_model_dir, capsys):
    meta = json.loads((exported / "captionbeam_export.json").read_text())
    assert meta["encoder"] == "mobilenet" and meta["beam_size"] == 2 and meta["image_size"] == [32, 32]
    from captionbeam.model.captioner import Captioner
    assert meta["model_version"] == Captioner.load(image_model_dir["merge"]).model_version
    capsys.readouterr()
    rc = cli(["export", "--model-dir", image_model_dir["merge"], "--output", str(exported)])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


def test_export_version_is_stable_across_reexports(image_model_dir, exported_model, tmp_path):
    """Re-exporting the same model with the same settings, to another directory, gives the same export
    version (bulk's manifest key), although the variables files differ byte-wise; another beam size
    gives another version."""
    from captionbeam.launch.cli import main as cli
    from captionbeam.model.export import export_version
    again = tmp_path / "again"
    assert cli(["export", "--model-dir", image_model_dir["merge"], "--output", str(again), "--beam-size", "2"]) == 0
    assert export_version(str(again)) == export_version(str(exported_model))
    meta = json.loads((again / "captionbeam_export.json").read_text())
    meta["beam_size"] = 3
    (again / "captionbeam_export.json").write_text(json.dumps(meta))
    assert export_version(str(again)) != export_version(str(exported_model))


def test_export_overwrite_swaps_the_new_export_in_and_leaves_nothing_beside(image_model_dir, tmp_path):
    """``--overwrite`` writes the new export beside (``<output>.tmp-*``) and renames it in, under the
    lease kept beside the output (``<output>.lease``): nothing of either is left afterwards, and the old
    export is replaced whole (its extra file is gone)."""
    from captionbeam.launch.cli import main as cli
    out = tmp_path / "export"
    assert cli(["export", "--model-dir", image_model_dir["merge"], "--output", str(out)]) == 0
    (out / "from-the-old-export.txt").write_text("old")
    assert cli(["export", "--model-dir", image_model_dir["merge"], "--output", str(out), "--overwrite",
                "--beam-size", "2"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["export"]
    assert not (out / "from-the-old-export.txt").exists()
    assert json.loads((out / "captionbeam_export.json").read_text())["beam_size"] == 2


def test_export_decides_per_image_and_refuses_pixel_bombs_from_the_header(exported):
    """A truncated JPEG, plain text and a 90 Mpx PNG (over the default --max-pixels, refused from its IHDR,
    never inflated) get valid=False and an empty caption; the good images in the same batch are captioned
    as they are alone; an empty batch gives empty outputs."""
    import io
    import tensorflow as tf
    from tests.plugins.hostile import png_bomb
    images, _ = draw_images(3, size=32, seed=5)
    encoded = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=95)
        encoded.append(buf.getvalue())
    bomb = png_bomb()
    assert len(bomb) < 1 << 20
    serve = tf.saved_model.load(str(exported)).signatures["serving_default"]
    alone = serve(images=tf.constant(encoded))
    batch = [encoded[0], encoded[1][: len(encoded[1]) // 2], b"plain text, not an image", encoded[1], bomb,
             encoded[2]]
    out = serve(images=tf.constant(batch))
    assert out["valid"].numpy().tolist() == [True, False, False, True, False, True]
    captions = [c.decode() for c in out["captions"].numpy()]
    assert [captions[i] for i in (0, 3, 5)] == [c.decode() for c in alone["captions"].numpy()]
    assert all(c for c in alone["captions"].numpy())
    assert [captions[i] for i in (1, 2, 4)] == ["", "", ""]
    np.testing.assert_allclose(out["log_probs"].numpy()[[0, 3, 5]], alone["log_probs"].numpy(), atol=1e-4)
    assert out["log_probs"].numpy()[[1, 2, 4]].tolist() == [0.0, 0.0, 0.0]
    none = serve(images=tf.constant(batch[1:3]))
    assert none["valid"].numpy().tolist() == [False, False] and none["captions"].numpy().tolist() == [b"", b""]
    empty = serve(images=tf.constant([], tf.string))
    assert {k: v.shape[0] for k, v in empty.items()} == {k: 0 for k in empty}
    meta = json.loads((exported / "captionbeam_export.json").read_text())
    assert meta["max_pixels"] == 89_478_485 and meta["export_format"] == EXPORT_FORMAT == 3


def test_export_decodes_jpeg_as_pillow_does(exported, image_model_dir, tmp_path):
    """A JPEG served as bytes is captioned from the pixels Pillow decodes (the features job's and bulk's
    decoder): same log-probabilities as the Captioner on Pillow's pixels. TensorFlow's default fast DCT
    differed by up to 5 levels per pixel."""
    import tensorflow as tf
    from captionbeam.model.captioner import Captioner
    images, _ = draw_images(3, size=32, seed=11)
    rng = np.random.default_rng(0)
    data, pixels = [], []
    for img in images:
        noisy = np.clip(img.astype(int) + rng.integers(-40, 40, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, "JPEG", quality=75)
        data.append(buf.getvalue())
        pixels.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    served = tf.saved_model.load(str(exported)).signatures["serving_default"](images=tf.constant(data))
    mine = Captioner.load(image_model_dir["merge"], beam_size=2).caption_images(np.stack(pixels))
    np.testing.assert_allclose(served["log_probs"].numpy(), [r.log_prob for r in mine], atol=1e-5)
