"""On the sample dataset, whether captions are about their image (``captionbeam run``'s extra metric)."""
from __future__ import annotations

from typing import Dict, Mapping

import captionbeam.pipelines.io as pio
from captionbeam.model import jsonl


def grounding(scenes_jsonl: str, predictions: Mapping[str, str]) -> Dict[str, float]:
    """On the sample dataset, how often the words of a caption are true of its image: of the colour
    (shape) words a caption uses, the fraction naming a colour (shape) that is drawn in it; next to
    the same figure with the captions given to other images (what an image-blind model scores)."""
    from captionbeam.pipelines.sample import COLOURS, SHAPE_PLURALS, SHAPE_WORDS
    word_shape = {w: s for s, ws in SHAPE_WORDS.items() for w in ws}
    word_shape.update({SHAPE_PLURALS[w]: s for w, s in list(word_shape.items()) if w in SHAPE_PLURALS})
    scenes = {}
    for row in jsonl.loads(pio.read_text(scenes_jsonl), scenes_jsonl):
        colours = {o["colour"] for o in row["objects"]} | set(str(row.get("background", "")).split("-"))
        scenes[row["image_id"]] = (colours, {o["shape"] for o in row["objects"]})
    ids = [i for i in predictions if i in scenes]

    def score(pairs):
        hit = {"colour": [0, 0], "shape": [0, 0]}
        for scene_id, caption in pairs:
            colours, shapes = scenes[scene_id]
            for w in caption.lower().split():
                if w in COLOURS:
                    hit["colour"][0] += w in colours
                    hit["colour"][1] += 1
                elif w in word_shape:
                    hit["shape"][0] += word_shape[w] in shapes
                    hit["shape"][1] += 1
        return {k: (a / b if b else 0.0) for k, (a, b) in hit.items()}

    own = score((i, predictions[i]) for i in ids)
    shifted = score((i, predictions[j]) for i, j in zip(ids, ids[1:] + ids[:1]))
    return {"colour_words_true": own["colour"], "colour_words_true_image_blind": shifted["colour"],
            "shape_words_true": own["shape"], "shape_words_true_image_blind": shifted["shape"]}
