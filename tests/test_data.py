"""Decoding every supported format to RGB (uint8, then [0, 1] in the step), and reading class folders."""
import numpy as np
import pytest
from PIL import Image

from conftest import encode
from tl_core.data.images import DatasetError, decode_and_resize, list_image_folder, to_unit_range

RGB = np.zeros((8, 12, 3), np.uint8)
RGB[:, :6] = (255, 0, 0)
RGB[:, 6:] = (0, 0, 255)


def decoded(data: bytes) -> np.ndarray:
    return to_unit_range(decode_and_resize(data, 8)).numpy()


@pytest.mark.parametrize("fmt", ["PNG", "BMP"])
def test_lossless_formats_decode_exactly(fmt):
    image = decoded(encode(RGB, fmt))
    assert image.shape == (8, 8, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[:, 0], [[1, 0, 0]] * 8, atol=1e-6)
    np.testing.assert_allclose(image[:, -1], [[0, 0, 1]] * 8, atol=1e-6)


def test_jpeg_decodes_close_to_the_original():
    image = decoded(encode(RGB, "JPEG", quality=95))
    np.testing.assert_allclose(image[:, 0], [[1, 0, 0]] * 8, atol=0.08)


def test_grayscale_becomes_three_equal_channels():
    gray = np.tile(np.linspace(0, 255, 12, dtype=np.uint8), (8, 1))
    image = decoded(encode(gray, "PNG"))
    assert image.shape == (8, 8, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_rgba_drops_alpha():
    rgba = np.concatenate([RGB, np.full((8, 12, 1), 128, np.uint8)], axis=-1)
    np.testing.assert_allclose(decoded(encode(rgba, "PNG")), decoded(encode(RGB, "PNG")), atol=1e-6)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.fromarray(RGB).convert("CMYK")
    import io

    buffer = io.BytesIO()
    cmyk.save(buffer, format="JPEG", quality=95)
    image = decoded(buffer.getvalue())
    np.testing.assert_allclose(image[:, 0], [[1, 0, 0]] * 8, atol=0.1)
    np.testing.assert_allclose(image[:, -1], [[0, 0, 1]] * 8, atol=0.1)


def test_gif_uses_the_first_frame():
    import io

    frames = [Image.fromarray(RGB), Image.fromarray(np.full_like(RGB, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    image = decoded(buffer.getvalue())
    assert image.shape == (8, 8, 3)
    np.testing.assert_allclose(image[:, 0], [[1, 0, 0]] * 8, atol=0.05)


def _touch_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(RGB, "PNG"))


def test_classes_in_sorted_folder_order_with_nested_files(tmp_path):
    for name in ("zebra/a.png", "cat/b.PNG", "cat/sub/c.jpg", "dog/d.gif"):
        _touch_image(tmp_path / name)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "dog" / ".hidden.png").write_bytes(b"")
    folder = list_image_folder(tmp_path)
    assert folder.class_names == ["cat", "dog", "zebra"]
    # Every file is listed (the decode check decides what is an image), in sorted path order.
    assert [p.split("/")[-1] for p in folder.paths] == ["b.PNG", "c.jpg", ".hidden.png", "d.gif", "notes.txt", "a.png"]
    assert folder.labels.tolist() == [0, 0, 1, 1, 1, 2]


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        list_image_folder(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no class sub-folders"):
        list_image_folder(tmp_path)
    (tmp_path / "cat").mkdir()
    with pytest.raises(DatasetError, match="cat holds no files"):
        list_image_folder(tmp_path)
    _touch_image(tmp_path / "cat" / "a.png")
    with pytest.raises(DatasetError, match="same class folders"):
        list_image_folder(tmp_path, class_names=["cat", "dog"])


def _batches(dataset) -> list[tuple]:
    return [(features.numpy(), labels.numpy()) for features, labels in dataset]


def test_every_epochs_batches_in_one_dataset_are_each_epochs_own():
    """One fit() trains a phase's epochs from one dataset: its batches are exactly those of each epoch's own dataset, in
    turn (the order drawn from (seed, epoch); an epoch's last, smaller batch is its own), for features of the images and
    for the feature bank (one view of each image drawn per epoch)."""
    from tl_core.data.images import make_feature_dataset
    from tl_core.data.feature_sets import InMemoryBank, InMemoryFeatures

    rng = np.random.default_rng(0)
    features = InMemoryFeatures(rng.random((23, 4), dtype=np.float32), np.arange(23, dtype=np.int32))
    expected = [batch for epoch in (2, 3, 4) for batch in _batches(features.dataset(5, seed=7, epoch=epoch))]
    got = _batches(features.epochs(5, seed=7, first=2, end=5, steps=5))
    assert len(got) == len(expected) == 15 and [len(labels) for _, labels in got[:5]] == [5, 5, 5, 5, 3]
    for (got_features, got_labels), (features_, labels) in zip(got, expected):
        np.testing.assert_array_equal(got_labels, labels)
        np.testing.assert_array_equal(got_features, features_)
    assert not np.array_equal(expected[0][1], expected[5][1])  # each epoch its own order

    bank = InMemoryBank(rng.random((3, 23, 4), dtype=np.float32), np.arange(23, dtype=np.int32))
    for epoch, rows in zip((0, 1), np.split(np.arange(10), 2)):
        views = np.random.default_rng(7 * 100_003 + epoch).integers(3, size=23)  # images.epoch_seed
        drawn = _batches(make_feature_dataset(bank.features[views, np.arange(23)], bank.labels, 5, seed=7, epoch=epoch))
        chained = _batches(bank.epochs(5, seed=7, first=0, end=2, steps=5))[rows[0]:rows[-1] + 1]
        for (got_features, got_labels), (features_, labels) in zip(chained, drawn):
            np.testing.assert_array_equal(got_labels, labels)
            np.testing.assert_array_equal(got_features, features_)


def test_chained_epochs_pass_each_epoch_on_and_refuse_a_short_one():
    import tensorflow as tf

    from tl_core.data.images import chained_epochs

    def epoch_dataset(epoch: int):
        return tf.data.Dataset.range(epoch * 10, epoch * 10 + (3 if epoch < 2 else 2)).batch(1)

    assert [int(batch[0]) for batch in chained_epochs(epoch_dataset, 0, 2, steps=3)] == [0, 1, 2, 10, 11, 12]
    with pytest.raises(tf.errors.OpError, match="epoch 3 gave 2 batches, not 3"):
        list(chained_epochs(epoch_dataset, 1, 3, steps=3))
