"""A second dataset of another kind, made offline: scikit-learn's handwritten digits, 10 classes.

1797 grayscale 8x8 images (0-16), bundled with scikit-learn, written as PNG class folders "0" to "9"
(values scaled to 0-255) with a seeded, stratified 70/30 split, like the built-in sample. Ten classes
of tiny, blocky images far from ImageNet: where a recipe tuned on two classes of silhouettes could
lose. Needs scikit-learn (`.[bench]`).
"""
from pathlib import Path

import numpy as np
import tensorflow as tf


def write_digits_dataset(root: Path, validation_fraction: float = 0.3, seed: int = 0) -> Path:
    """root/{train,validation}/<digit>/NNNN.png."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        rows = rng.permutation(np.flatnonzero(digits.target == label))
        held_out = int(round(len(rows) * validation_fraction))
        for split, chosen in (("validation", rows[:held_out]), ("train", rows[held_out:])):
            folder = Path(root) / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for row in chosen:
                pixels = np.round(digits.images[row] * 255 / 16).astype(np.uint8)[:, :, None]
                (folder / f"{row:04d}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    return Path(root)
