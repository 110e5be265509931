"""The sample dataset: deterministic, in Flickr8k's formats, and its captions describe what is drawn."""
import filecmp
import os
import re

import numpy as np
import pytest
from PIL import Image

from captionbeam.launch.cli import main as cli
from captionbeam.model.caption_files import group, parse, parse_split_file
from captionbeam.pipelines.sample import (BACKGROUNDS, COLOURS, SHAPE_PLURALS, SHAPE_WORDS, SampleConfig, assign_splits,
                              make_scene, read_scenes, render, write_sample)
from tests.plugins.data import SAMPLE_IMAGES, SAMPLE_SIZE

ALL_SHAPE_WORDS = {w: shape for shape, words in SHAPE_WORDS.items() for w in words}
ALL_SHAPE_WORDS.update({SHAPE_PLURALS[w]: shape for w, shape in list(ALL_SHAPE_WORDS.items())})


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_layout_and_formats(sample_dir):
    images = sorted(os.listdir(os.path.join(sample_dir, "images")))
    assert len(images) == SAMPLE_IMAGES
    assert images[0] == "sample_00000.jpg" and images[-1] == f"sample_{SAMPLE_IMAGES - 1:05d}.jpg"
    with Image.open(os.path.join(sample_dir, "images", images[0])) as img:
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (SAMPLE_SIZE, SAMPLE_SIZE)

    text = _read(os.path.join(sample_dir, "captions.txt"))
    assert re.match(r"^sample_00000\.jpg#0\t\S", text)
    captions = group(parse(text, "auto", "captions.txt"))  # detected as Flickr8k
    assert sorted(captions) == [i[:-4] for i in images]
    assert all(len(c) == 5 and len(set(c)) == 5 for c in captions.values())

    splits = {n: parse_split_file(_read(os.path.join(sample_dir, f"{n}.txt"))) for n in ("train", "dev", "test")}
    assert [len(splits[n]) for n in ("train", "dev", "test")] == [48, 6, 6]
    assert sorted(splits["train"] + splits["dev"] + splits["test"]) == sorted(captions)  # disjoint, complete


def test_captions_describe_the_drawn_scene(sample_dir):
    scenes = read_scenes(_read(os.path.join(sample_dir, "scenes.jsonl")))
    captions = group(parse(_read(os.path.join(sample_dir, "captions.txt")), "flickr8k"))
    assert len(scenes) == SAMPLE_IMAGES
    colour_words = set(COLOURS) | set(BACKGROUNDS)
    n_shapes_seen = set()
    for scene in scenes:
        caps = captions[scene["image_id"]]
        assert list(caps) == scene["captions"]
        objects = scene["objects"]
        n_shapes_seen.update(o["shape"] for o in objects)
        drawn_colours = {o["colour"] for o in objects}
        bg_colours = set(scene["background"].split("-"))
        drawn_shapes = {o["shape"] for o in objects}
        words_all = set()
        for cap in caps:
            words = re.findall(r"[a-z]+", cap.lower())
            words_all.update(words)
            # every caption names at least one drawn colour and one drawn shape ...
            assert drawn_colours & set(words) or len(objects) > 1, (scene["image_id"], cap)
            # ... and never a colour or a shape that is not in the picture
            assert {w for w in words if w in colour_words} <= drawn_colours | bg_colours, (scene["image_id"], cap)
            assert {ALL_SHAPE_WORDS[w] for w in words if w in ALL_SHAPE_WORDS} <= drawn_shapes, (scene["image_id"], cap)
        # over its five captions, every object's colour is mentioned
        assert drawn_colours <= words_all, scene["image_id"]
    assert n_shapes_seen == set(SHAPE_WORDS)


def test_pixels_show_the_described_colours(sample_dir):
    """At each object's centre the JPEG shows the object's colour: the captions are grounded in pixels."""
    scenes = read_scenes(_read(os.path.join(sample_dir, "scenes.jsonl")))
    for scene in scenes[:20]:
        with Image.open(os.path.join(sample_dir, "images", scene["image_id"] + ".jpg")) as img:
            pixels = np.asarray(img.convert("RGB"), np.int32)
        for o in scene["objects"]:
            x, y = int(o["x"] * SAMPLE_SIZE), int(o["y"] * SAMPLE_SIZE)
            patch = pixels[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(axis=0)
            dist = {name: np.abs(patch - rgb).sum() for name, rgb in COLOURS.items()}
            assert min(dist, key=dist.get) == o["colour"], (scene["image_id"], o, patch)


def test_deterministic_and_independent_of_dataset_size(tmp_path):
    a, b, c, d = (str(tmp_path / n) for n in "abcd")
    write_sample(SampleConfig(output=a, images=8, seed=7, size=32))
    write_sample(SampleConfig(output=b, images=8, seed=7, size=32))
    write_sample(SampleConfig(output=c, images=12, seed=7, size=32))
    write_sample(SampleConfig(output=d, images=8, seed=8, size=32))
    match, mismatch, errors = filecmp.cmpfiles(a, b, ["captions.txt", "train.txt", "dev.txt", "test.txt",
                                                      "scenes.jsonl"] + [f"images/sample_{i:05d}.jpg" for i in range(8)],
                                               shallow=False)
    assert not mismatch and not errors and len(match) == 13
    # image k is the same whatever the dataset size
    same = filecmp.cmpfiles(a, c, [f"images/sample_{i:05d}.jpg" for i in range(8)], shallow=False)[0]
    assert len(same) == 8
    # another seed draws other scenes
    assert _read(os.path.join(a, "captions.txt")) != _read(os.path.join(d, "captions.txt"))
    assert make_scene(7, 3) == make_scene(7, 3) and make_scene(7, 3) != make_scene(8, 3)


def test_render_sizes_and_split_edge_cases():
    scene = make_scene(0, 0)
    assert render(scene, 16).size == (16, 16)
    assert render(scene, 200).size == (200, 200)
    assert assign_splits(["x"], 0) == {"train": ["x"], "dev": [], "test": []}
    three = assign_splits(["a", "b", "c"], 0)
    assert sorted(len(v) for v in three.values()) == [1, 1, 1]
    big = assign_splits([str(i) for i in range(1000)], 0)
    assert [len(big[k]) for k in ("train", "dev", "test")] == [800, 100, 100]


def test_bad_config():
    with pytest.raises(ValueError, match="--images"):
        SampleConfig(output="x", images=0)
    with pytest.raises(ValueError, match="--size"):
        SampleConfig(output="x", size=8)


def test_cli(tmp_path, capsys):
    out = str(tmp_path / "s")
    assert cli(["sample", "--output", out, "--images", "10", "--seed", "3", "--size", "32",
                "--splits", "6,2,2"]) == 0
    printed = capsys.readouterr().out
    assert "sample dataset: 10 images (32x32), 50 captions" in printed
    assert "splits: train 6, dev 2, test 2" in printed
    assert len(os.listdir(os.path.join(out, "images"))) == 10
    with pytest.raises(SystemExit) as e:
        cli(["sample", "--output", out, "--images", "0"])
    assert e.value.code == 2
    assert "--images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["sample", "--output", out, "--splits", "80,20"])
    assert "--splits" in capsys.readouterr().err


def test_sample_to_gcs(gcs_bucket):
    assert cli(["sample", "--output", f"{gcs_bucket.url}/sample", "--images", "3", "--size", "16"]) == 0
    keys = gcs_bucket.keys("sample/")
    assert keys == ["sample/captions.txt", "sample/dev.txt", "sample/images/sample_00000.jpg",
                    "sample/images/sample_00001.jpg", "sample/images/sample_00002.jpg", "sample/scenes.jsonl",
                    "sample/test.txt", "sample/train.txt"]
    assert gcs_bucket.read("sample/captions.txt").decode().count("\n") == 15
