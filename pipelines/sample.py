"""The sample captioning dataset: procedurally drawn scenes with five human-style captions each.

Pure Pillow + NumPy (no Beam, no TensorFlow), deterministic from a seed. Each image is drawn from
its own random stream (``seed`` and image index), so image ``sample_00042`` is the same whether the
dataset has 50 or 5,000 images.

A scene has a background (a plain colour or a vertical two-colour gradient) and one to three
objects; each object has a shape (circle, square, triangle, star, diamond), a colour (red, green,
blue, yellow, purple, orange), a size (small, large) and a position (left, right, top, bottom,
centre), all different positions within a scene. The captions are written from the scene with
varied templates and synonyms (counts, positions, relations, background), so they depend on the
image and a captioning model can learn them.

Output (Flickr8k's text formats, so ``captionbeam captions`` reads it like the real thing)::

    DIR/images/sample_00000.jpg ...
    DIR/captions.txt          sample_00000.jpg#0<TAB>A large red circle on a blue background .
    DIR/train.txt dev.txt test.txt   one file name per line
    DIR/scenes.jsonl          the ground truth of every scene (what was drawn, where)
"""
from __future__ import annotations

import io
import json
import math
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from captionbeam.model import jsonl

# ----------------------------------------------------------------------------- vocabulary of scenes
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (40, 170, 60),
    "blue": (40, 80, 215),
    "yellow": (245, 215, 30),
    "purple": (135, 50, 170),
    "orange": (245, 135, 20),
}
BACKGROUNDS: Dict[str, Tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "blue": (70, 110, 200),
    "green": (70, 160, 90),
    "pink": (240, 170, 190),
}
SIZES: Tuple[str, ...] = ("small", "large")
POSITIONS: Dict[str, Tuple[float, float]] = {  # centre of the object, as a fraction of the image side
    "left": (0.22, 0.5),
    "right": (0.78, 0.5),
    "top": (0.5, 0.22),
    "bottom": (0.5, 0.78),
    "centre": (0.5, 0.5),
}
_RADIUS = {"small": 0.09, "large": 0.165}  # fraction of the image side

# Synonyms used by the captions (the first is the plain name).
SHAPE_WORDS: Dict[str, Tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc", "dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
    "diamond": ("diamond", "rhombus"),
}
SHAPE_PLURALS = {"circle": "circles", "ball": "balls", "disc": "discs", "dot": "dots", "square": "squares",
                 "box": "boxes", "block": "blocks", "triangle": "triangles", "star": "stars",
                 "diamond": "diamonds", "rhombus": "rhombuses"}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
POSITION_PHRASES = {
    "left": ("on the left", "in the left part of the picture", "at the left side", "on the left side of the image"),
    "right": ("on the right", "in the right part of the picture", "at the right side", "on the right side of the image"),
    "top": ("at the top", "in the upper part of the picture", "near the top edge", "at the top of the image"),
    "bottom": ("at the bottom", "in the lower part of the picture", "near the bottom edge", "at the bottom of the image"),
    "centre": ("in the middle", "in the centre", "in the center of the picture", "in the middle of the image"),
}
NUMBERS = {1: "one", 2: "two", 3: "three"}
SPLITS = ("train", "dev", "test")


# ----------------------------------------------------------------------------- configuration and scene
@dataclass(frozen=True)
class SampleConfig:
    output: str
    images: int = 100
    seed: int = 0
    size: int = 128
    captions_per_image: int = 5
    fractions: Tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, dev, test
    jpeg_quality: int = 90
    prefix: str = "sample"

    def __post_init__(self):
        if self.images < 1:
            raise ValueError(f"--images must be at least 1, got {self.images}")
        if not 16 <= self.size <= 2048:
            raise ValueError(f"--size must be between 16 and 2048 pixels, got {self.size}")
        if not 1 <= self.captions_per_image <= 20:
            raise ValueError(f"--captions-per-image must be between 1 and 20, got {self.captions_per_image}")
        if len(self.fractions) != 3 or any(f < 0 for f in self.fractions) or not math.isclose(sum(self.fractions), 1.0, abs_tol=1e-6):
            raise ValueError(f"--splits must be three non-negative fractions summing to 1, got {self.fractions}")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str
    x: float  # centre, fraction of the side
    y: float
    radius: float  # fraction of the side
    rotation: float  # degrees


@dataclass(frozen=True)
class Scene:
    image_id: str
    background: str  # colour name, or "<top>-<bottom>" for a gradient
    gradient: bool
    objects: Tuple[SceneObject, ...]
    captions: Tuple[str, ...] = field(default=())

    def to_json(self) -> str:
        d = asdict(self)
        d["objects"] = [asdict(o) for o in self.objects]
        return json.dumps(d, sort_keys=True)


def image_name(prefix: str, index: int) -> str:
    return f"{prefix}_{index:05d}"


def _rng(seed: int, index: int) -> random.Random:
    # String seeding is deterministic across processes and Python versions (sha512 of the string).
    return random.Random(f"captionbeam-sample:{seed}:{index}")


def make_scene(seed: int, index: int, prefix: str = "sample", captions_per_image: int = 5) -> Scene:
    """The scene of image ``index``: a pure function of (seed, index)."""
    rng = _rng(seed, index)
    n_objects = rng.choices((1, 2, 3), weights=(0.45, 0.35, 0.20))[0]
    gradient = rng.random() < 0.25
    if gradient:
        top, bottom = rng.sample(sorted(BACKGROUNDS), 2)
        background, bg_colours = f"{top}-{bottom}", {top, bottom}
    else:
        background = rng.choice(sorted(BACKGROUNDS))
        bg_colours = {background}
    positions = rng.sample(sorted(POSITIONS), n_objects)
    objects = []
    for pos in positions:
        colour = rng.choice([c for c in sorted(COLOURS) if c not in bg_colours])
        size = rng.choice(SIZES)
        cx, cy = POSITIONS[pos]
        objects.append(SceneObject(
            shape=rng.choice(SHAPES), colour=colour, size=size, position=pos,
            x=round(cx + rng.uniform(-0.03, 0.03), 4), y=round(cy + rng.uniform(-0.03, 0.03), 4),
            radius=round(_RADIUS[size] * rng.uniform(0.9, 1.1), 4), rotation=round(rng.uniform(-15, 15), 2)))
    scene = Scene(image_name(prefix, index), background, gradient, tuple(objects))
    captions = write_captions(scene, rng, captions_per_image)
    return Scene(scene.image_id, background, gradient, tuple(objects), tuple(captions))


# ----------------------------------------------------------------------------- drawing
def _polygon(shape: str, cx: float, cy: float, r: float, rotation: float) -> List[Tuple[float, float]]:
    def rot(points):
        a = math.radians(rotation)
        ca, sa = math.cos(a), math.sin(a)
        return [(cx + px * ca - py * sa, cy + px * sa + py * ca) for px, py in points]
    if shape == "square":
        s = r * 0.85
        return rot([(-s, -s), (s, -s), (s, s), (-s, s)])
    if shape == "triangle":
        return rot([(r * math.cos(math.radians(a)), r * math.sin(math.radians(a))) for a in (-90, 30, 150)])
    if shape == "diamond":
        return rot([(0, -r), (r * 0.7, 0), (0, r), (-r * 0.7, 0)])
    if shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.45
            a = math.radians(-90 + 36 * k)
            pts.append((rr * math.cos(a), rr * math.sin(a)))
        return rot(pts)
    raise ValueError(f"unknown shape {shape!r}")


def _background(scene: Scene, side: int) -> Image.Image:
    if not scene.gradient:
        return Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    top, bottom = scene.background.split("-")
    t = np.linspace(0.0, 1.0, side, dtype=np.float32)[:, None, None]
    rows = (1 - t) * np.asarray(BACKGROUNDS[top], np.float32) + t * np.asarray(BACKGROUNDS[bottom], np.float32)
    return Image.fromarray(np.repeat(rows, side, axis=1).round().astype(np.uint8), "RGB")


def render(scene: Scene, size: int = 128, supersample: int = 2) -> Image.Image:
    """Draw the scene (anti-aliased by supersampling)."""
    side = size * supersample
    img = _background(scene, side)
    draw = ImageDraw.Draw(img)
    # Large objects first, so a small object next to a large one stays visible.
    for obj in sorted(scene.objects, key=lambda o: -o.radius):
        cx, cy, r = obj.x * side, obj.y * side, obj.radius * side
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_polygon(obj.shape, cx, cy, r, obj.rotation), fill=fill)
    return img.resize((size, size), Image.LANCZOS) if supersample > 1 else img


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------- captions
def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _noun(obj: SceneObject, rng: random.Random) -> str:
    return rng.choice(SHAPE_WORDS[obj.shape])


def _describe(obj: SceneObject, rng: random.Random, size: Optional[bool] = None) -> str:
    """'large red ball' / 'red circle' (size word with probability one half unless forced)."""
    use_size = rng.random() < 0.5 if size is None else size
    words = ([rng.choice(SIZE_WORDS[obj.size])] if use_size else []) + [obj.colour, _noun(obj, rng)]
    return " ".join(words)


def _background_phrase(scene: Scene, rng: random.Random) -> str:
    if scene.gradient:
        top, bottom = scene.background.split("-")
        return rng.choice((f"a {top} and {bottom} gradient background", f"a background fading from {top} to {bottom}",
                           f"a {top} to {bottom} gradient"))
    return rng.choice((f"a {scene.background} background", f"{scene.background}", f"a plain {scene.background} background"))


def _relation(a: SceneObject, b: SceneObject) -> str:
    """Where ``a`` is relative to ``b``."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _count_phrase(scene: Scene, rng: random.Random) -> str:
    n = len(scene.objects)
    shapes = {o.shape for o in scene.objects}
    if n > 1 and len(shapes) == 1:
        word = rng.choice(SHAPE_WORDS[scene.objects[0].shape])
        return f"{NUMBERS[n]} {SHAPE_PLURALS[word]}"
    return f"{NUMBERS[n]} {rng.choice(('shapes', 'objects', 'things'))}"


def _listing(scene: Scene, rng: random.Random) -> str:
    parts = [_a(_describe(o, rng)) for o in scene.objects]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _templates_single(scene: Scene, rng: random.Random) -> List[str]:
    o = scene.objects[0]
    pos = lambda: rng.choice(POSITION_PHRASES[o.position])  # noqa: E731
    bg = lambda: _background_phrase(scene, rng)  # noqa: E731
    return [
        f"{_a(_describe(o, rng))} on {bg()}",
        f"there is {_a(_describe(o, rng, size=True))} {pos()}",
        f"{_a(_describe(o, rng, size=True))} {pos()} against {bg()}",
        f"a picture of one {o.colour} {_noun(o, rng)} {pos()}",
        f"{_a(_describe(o, rng))} drawn {pos()}",
        f"a single {_describe(o, rng, size=True)} sits {pos()}",
        f"the image shows {_a(_describe(o, rng))} on {bg()}",
        f"{_a(o.colour)} shape {pos()} , it is {_a(o.size)} {_noun(o, rng)}",
    ]


def _templates_multi(scene: Scene, rng: random.Random) -> List[str]:
    objs = list(scene.objects)
    a, b = rng.sample(objs, 2)
    bg = lambda: _background_phrase(scene, rng)  # noqa: E731
    pos = lambda o: rng.choice(POSITION_PHRASES[o.position])  # noqa: E731
    count = _count_phrase(scene, rng)
    out = [
        f"{count} on {bg()}",
        f"{_listing(scene, rng)} on {bg()}",
        f"{_a(_describe(a, rng))} {_relation(a, b)} {_a(_describe(b, rng))}",
        f"there are {count} : {_listing(scene, rng)}",
        f"{_a(_describe(a, rng, size=True))} {pos(a)} and {_a(_describe(b, rng, size=True))} {pos(b)}",
        f"{count} , one of them is {_a(_describe(a, rng))} {pos(a)}",
        f"the picture shows {_listing(scene, rng)}",
        f"{_a(_describe(b, rng))} {_relation(b, a)} {_a(_describe(a, rng))} on {bg()}",
    ]
    if len(objs) == 3:
        c = [o for o in objs if o is not a and o is not b][0]
        out.append(f"{_a(_describe(c, rng, size=True))} {pos(c)} with two more shapes")
    return out


def _style(text: str, rng: random.Random) -> str:
    """Human-style surface noise, as in Flickr8k: capitalised first letter, sometimes a ' .' ending."""
    text = " ".join(text.split())
    if rng.random() < 0.6:
        text = text[0].upper() + text[1:]
    r = rng.random()
    if r < 0.5:
        text += " ."
    elif r < 0.6:
        text += "."
    return text


def write_captions(scene: Scene, rng: random.Random, n: int = 5) -> List[str]:
    """``n`` different captions of the scene, from different templates."""
    templates = _templates_single(scene, rng) if len(scene.objects) == 1 else _templates_multi(scene, rng)
    picked = rng.sample(templates, min(n, len(templates)))
    while len(picked) < n:  # more captions than templates: reuse templates (with fresh synonyms)
        picked.append(rng.choice(templates))
    return [_style(t, rng) for t in picked]


# ----------------------------------------------------------------------------- splits and writing
def assign_splits(ids: Sequence[str], seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> Dict[str, List[str]]:
    """Shuffle the ids with the seed and cut them train/dev/test; dev and test get at least one id
    each when there are at least three images and their fraction is non-zero. Each split is sorted."""
    order = sorted(ids)
    random.Random(f"captionbeam-split:{seed}").shuffle(order)
    n = len(order)
    n_dev = int(round(n * fractions[1]))
    n_test = int(round(n * fractions[2]))
    if n >= 3:
        n_dev = max(n_dev, 1 if fractions[1] > 0 else 0)
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
    n_train = max(n - n_dev - n_test, 0)
    return {
        "train": sorted(order[:n_train]),
        "dev": sorted(order[n_train:n_train + n_dev]),
        "test": sorted(order[n_train + n_dev:]),
    }


def _writer(output: str):
    """(relative path, bytes) -> None; local files directly, gs:// through Beam's FileSystems."""
    if output.startswith("gs://"):
        from captionbeam.pipelines import io as pio

        def write(rel: str, data: bytes) -> None:
            pio.write_bytes(pio.join(output, rel), data)
        return write

    def write_local(rel: str, data: bytes) -> None:
        path = os.path.join(output, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return write_local


@dataclass
class SampleSummary:
    output: str
    images: int
    captions: int
    splits: Dict[str, int]
    shapes: Dict[str, int]
    colours: Dict[str, int]
    objects_per_image: Dict[int, int]
    bytes_written: int


def write_sample(config: SampleConfig, progress=None) -> SampleSummary:
    """Draw and write the whole dataset; ``progress(done, total)`` is called every few images."""
    write = _writer(config.output)
    scenes: List[Scene] = []
    total_bytes = 0
    for i in range(config.images):
        scene = make_scene(config.seed, i, config.prefix, config.captions_per_image)
        data = encode_jpeg(render(scene, config.size), config.jpeg_quality)
        write(f"images/{scene.image_id}.jpg", data)
        total_bytes += len(data)
        scenes.append(scene)
        if progress and ((i + 1) % 100 == 0 or i + 1 == config.images):
            progress(i + 1, config.images)
    lines = [f"{s.image_id}.jpg#{k}\t{c}" for s in scenes for k, c in enumerate(s.captions)]
    texts = {"captions.txt": "\n".join(lines) + "\n",
             "scenes.jsonl": "".join(s.to_json() + "\n" for s in scenes)}
    splits = assign_splits([s.image_id for s in scenes], config.seed, config.fractions)
    for name in SPLITS:
        texts[f"{name}.txt"] = "".join(f"{iid}.jpg\n" for iid in splits[name])
    for rel, text in texts.items():
        data = text.encode("utf-8")
        write(rel, data)
        total_bytes += len(data)
    shapes: Dict[str, int] = {}
    colours: Dict[str, int] = {}
    per_image: Dict[int, int] = {}
    for s in scenes:
        per_image[len(s.objects)] = per_image.get(len(s.objects), 0) + 1
        for o in s.objects:
            shapes[o.shape] = shapes.get(o.shape, 0) + 1
            colours[o.colour] = colours.get(o.colour, 0) + 1
    return SampleSummary(config.output, len(scenes), len(lines), {k: len(v) for k, v in splits.items()},
                         dict(sorted(shapes.items())), dict(sorted(colours.items())), dict(sorted(per_image.items())),
                         total_bytes)


def read_scenes(text: str) -> List[dict]:
    """``scenes.jsonl`` -> list of scene dicts (ground truth for tests and reports)."""
    return jsonl.loads(text, "scenes.jsonl")
