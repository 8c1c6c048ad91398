"""Realistic photos, made here: random crops of scikit-image's colour photos as JPEGs of about 500x375.

The classic recipe's cats_and_dogs_filtered images are JPEGs of about 500x375 pixels at quality
about 75; the built-in sample's 28x28 silhouettes cost the host far less per image than such photos.
This writes class folders of the same size and compression, offline: one class per source photo,
each image a random 4:3 crop (30-100 % of the largest one), mirrored half the time, resized to
500x375 (or 375x500, one in four) and encoded at quality 75. Needs scikit-image (`.[bench]`).
"""
from pathlib import Path

import numpy as np
import tensorflow as tf

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
LONG_SIDE, SHORT_SIDE, QUALITY = 500, 375, 75


def random_photo(source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    portrait = rng.random() < 0.25
    height, width = source.shape[:2]
    aspect = SHORT_SIDE / LONG_SIDE if not portrait else LONG_SIDE / SHORT_SIDE  # height / width
    crop_h, crop_w = (height, int(height / aspect)) if height / width < aspect else (int(width * aspect), width)
    scale = rng.uniform(0.3, 1.0)
    crop_h, crop_w = max(int(crop_h * scale), 8), max(int(crop_w * scale), 8)
    top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    crop = source[top:top + crop_h, left:left + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    size = (LONG_SIDE, SHORT_SIDE) if portrait else (SHORT_SIDE, LONG_SIDE)
    return tf.cast(tf.round(tf.image.resize(crop, size, antialias=True)), tf.uint8).numpy()


def write_photo_dataset(root: Path, per_class: dict[str, int], seed: int = 0, classes=PHOTOS) -> Path:
    """root/<split>/<photo name>/NNNN.jpg for each split in per_class (e.g. {"train": 100, "validation": 40})."""
    import skimage.data

    rng = np.random.default_rng(seed)
    for name in classes:
        source = getattr(skimage.data, name)()[:, :, :3]
        for split, count in per_class.items():
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                jpeg = tf.io.encode_jpeg(random_photo(source, rng), quality=QUALITY).numpy()
                (folder / f"{name}_{i:04d}.jpg").write_bytes(jpeg)
    return Path(root)
