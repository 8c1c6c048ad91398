"""Augmentation = ImageDataGenerator's random_transform, as batched TF ops."""
import dataclasses

import numpy as np
import tensorflow as tf
from scipy import ndimage

from tl_core.data import augment
from tl_core.data.images import ImageFolder, make_dataset

NO_AUGMENTATION = augment.AugmentConfig(0, 0, 0, 0, 0, False)


def apply_affine(images: tf.Tensor, matrices: tf.Tensor) -> tf.Tensor:
    """Warp a batch [B, H, W, C] with (row, col) output-to-input matrices [B, 3, 3], as the training step warps."""
    return augment.apply_transforms(images, augment.projective_transforms(matrices))


def idg_apply_affine_transform(image, theta, tx, ty, shear, zx, zy):
    """Keras ImageDataGenerator.apply_affine_transform (order=1, fill_mode='nearest'), verbatim in numpy."""
    theta, shear = np.deg2rad(theta), np.deg2rad(shear)
    matrix = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    matrix = matrix @ np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    matrix = matrix @ np.array([[1, -np.sin(shear), 0], [0, np.cos(shear), 0], [0, 0, 1]])
    matrix = matrix @ np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    h, w = image.shape[:2]
    o_x, o_y = h / 2 - 0.5, w / 2 - 0.5
    matrix = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]]) @ matrix @ np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    return np.stack([ndimage.affine_transform(image[:, :, c], matrix[:2, :2], matrix[:2, 2], order=1, mode="nearest")
                     for c in range(image.shape[2])], axis=-1)


def test_matches_image_data_generator_transform():
    rng = np.random.default_rng(0)
    images = rng.random((6, 37, 53, 3)).astype(np.float32)
    params = augment.sample_params(6, [3, 4])
    warped = apply_affine(images, augment.affine_matrices(params, 37, 53)).numpy()
    for i in range(6):
        expected = idg_apply_affine_transform(
            images[i], float(params["theta"][i]), float(params["tx"][i]) * 37, float(params["ty"][i]) * 53,
            float(params["shear"][i]), float(params["zx"][i]), float(params["zy"][i]))
        np.testing.assert_allclose(warped[i], expected, atol=1e-4)


def test_parameters_stay_inside_the_recipe_ranges():
    params = {k: v.numpy() for k, v in augment.sample_params(20000, [0, 1]).items()}
    recipe = augment.RECIPE
    for name, limit in (("theta", recipe.rotation_range), ("tx", recipe.height_shift_range),
                        ("ty", recipe.width_shift_range), ("shear", recipe.shear_range)):
        assert np.abs(params[name]).max() <= limit
        assert np.abs(params[name]).max() > 0.95 * limit  # the whole range is used
    for name in ("zx", "zy"):
        assert 1 - recipe.zoom_range <= params[name].min() and params[name].max() <= 1 + recipe.zoom_range
    assert not np.allclose(params["zx"], params["zy"])  # independent zoom per axis, as in IDG
    assert 0.48 < params["flip"].mean() < 0.52


def test_shift_moves_a_dot_by_the_drawn_fraction():
    image = np.zeros((1, 41, 41, 1), np.float32)
    image[0, 20, 20] = 1.0
    params = {**augment.sample_params(1, [0, 0], NO_AUGMENTATION), "tx": tf.constant([0.2]), "ty": tf.constant([-0.1])}
    out = apply_affine(image, augment.affine_matrices(params, 41, 41)).numpy()[0, :, :, 0]
    # Output pixel p samples input p + shift, so the dot moves by -shift: 0.2 * 41 = 8.2 rows up.
    row, col = np.unravel_index(out.argmax(), out.shape)
    assert (row, col) == (12, 24)


def test_flip_flips_and_nothing_else_changes():
    images = np.random.default_rng(0).random((64, 8, 8, 3)).astype(np.float32)
    only_flip = dataclasses.replace(NO_AUGMENTATION, horizontal_flip=True)
    out = augment.random_transform(images, [5, 6], only_flip).numpy()
    flipped = np.array([np.allclose(o, i[:, ::-1], atol=1e-6) for o, i in zip(out, images)])
    same = np.array([np.allclose(o, i, atol=1e-6) for o, i in zip(out, images)])
    assert np.all(flipped ^ same) and 16 < flipped.sum() < 48


def test_nearest_fill_leaves_no_black_corners():
    white = np.ones((16, 64, 64, 3), np.float32)
    out = augment.random_transform(white, [1, 2]).numpy()
    np.testing.assert_allclose(out, 1.0, atol=1e-5)
    params = {**augment.sample_params(1, [0, 0], NO_AUGMENTATION), "theta": tf.constant([40.0]), "zx": tf.constant([1.2])}
    out = apply_affine(white[:1], augment.affine_matrices(params, 64, 64)).numpy()
    assert out.min() > 0.999


def _folder(tmp_path, n=6):
    import tensorflow as tf

    paths = []
    rng = np.random.default_rng(0)
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(tf.io.encode_png(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).numpy())
        paths.append(str(path))
    return ImageFolder(paths, np.arange(n, dtype=np.int32) % 2, ["a", "b"])


def _collect(dataset):
    """(images, transforms or None, labels) of a whole dataset, as numpy."""
    images, transforms, labels = [], [], []
    for features, y in dataset:
        if isinstance(features, dict):
            images.append(features["images"].numpy())
            transforms.append(features["transforms"].numpy())
        else:
            images.append(features.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), (np.concatenate(transforms) if transforms else None), np.concatenate(labels)


def test_training_pipeline_is_deterministic_per_seed_and_epoch(tmp_path):
    folder = _folder(tmp_path)
    def run(seed, epoch):
        return _collect(make_dataset(folder, 24, 4, shuffle=True, augment_images=True, seed=seed, epoch=epoch))

    first, again = run(0, 0), run(0, 0)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert first[0].dtype == np.uint8 and first[1].shape == (6, 8)
    assert not np.allclose(first[1], run(0, 1)[1])  # a new epoch draws new augmentations
    assert not np.allclose(first[1], run(1, 0)[1])


def test_the_step_warps_as_image_data_generator_does(tmp_path):
    """The pipeline hands uint8 images and transforms; the training step's preprocessing warps them
    on the device exactly as ImageDataGenerator's formula (scipy), flips included."""
    from tl_core.data.images import epoch_seed
    from tl_core.data.step import DevicePreprocessing

    folder = _folder(tmp_path, n=8)
    seed, epoch = 3, 2
    batches = list(make_dataset(folder, 24, 4, augment_images=True, seed=seed, epoch=epoch))
    preprocess = DevicePreprocessing()
    flips = 0
    # One transform per image of the epoch, in reading order, drawn from (seed, epoch).
    params = {k: v.numpy() for k, v in augment.sample_params(8, [epoch_seed(seed, epoch), 0]).items()}
    for step, (features, _) in enumerate(batches):
        warped = preprocess(features["images"], features["transforms"]).numpy()
        for j, image in enumerate(features["images"].numpy().astype(np.float32) / 255.0):
            i = 4 * step + j
            expected = idg_apply_affine_transform(
                image, params["theta"][i], params["tx"][i] * 24, params["ty"][i] * 24,
                params["shear"][i], params["zx"][i], params["zy"][i])
            if params["flip"][i]:
                expected, flips = expected[:, ::-1], flips + 1
            np.testing.assert_allclose(warped[j], expected, atol=1e-4)
    assert 0 < flips < 8


def test_validation_images_are_only_resized(tmp_path):
    folder = _folder(tmp_path)
    images, transforms, labels = _collect(make_dataset(folder, 24, 4))
    assert images.dtype == np.uint8 and transforms is None
    for image, path in zip(images, folder.paths):
        raw = tf.io.decode_png(tf.io.read_file(path))
        expected = np.round(tf.image.resize(raw, (24, 24)).numpy())
        np.testing.assert_array_equal(image, expected)
    np.testing.assert_array_equal(labels, folder.labels)
