"""The embedded default's tiny image encoder (``captionbeam run`` on the sample dataset): a ``.keras``
file that ``captionbeam features --encoder PATH`` loads like any user model."""
from __future__ import annotations

import os


def build_thumbnail_encoder(path: str, image_size: int, grid: int = 16, spatial: bool = False) -> str:
    """Write the embedded default's tiny encoder to ``path`` (a ``.keras`` file ``captionbeam
    features --encoder PATH`` loads like any user model): the image rescaled to -1..1 and
    average-pooled to a ``grid`` x ``grid`` colour thumbnail; flattened (merge / inject), or as a
    (grid/2, grid/2, 12) map (2x2 cells stacked per location) for the attention model.

    No weights to download and nothing random: on the sample dataset (coloured shapes at positions
    on backgrounds) this keeps what the captions talk about, so a model trained for a minute or two
    learns it. Real data wants a real encoder (``--encoder mobilenet --weights imagenet``)."""
    import keras
    if image_size % grid:
        raise ValueError(f"--image-size {image_size} must be a multiple of the thumbnail grid {grid}")
    inp = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_unit_range")(inp)
    x = keras.layers.AveragePooling2D(image_size // grid, name="thumbnail")(x)
    if spatial:
        half = grid // 2
        x = keras.layers.Reshape((half, 2, half, 2, 3))(x)
        x = keras.layers.Permute((1, 3, 2, 4, 5))(x)
        x = keras.layers.Reshape((half, half, 12), name="cells")(x)
    else:
        x = keras.layers.Flatten(name="features")(x)
    model = keras.Model(inp, x, name=f"thumbnail{grid}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    model.save(path)
    return path
