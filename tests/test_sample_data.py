import numpy as np

from tl_core.data.images import list_image_folder
from tl_core.data.sample import prepare_cats_vs_dogs, stratified_split


def test_split_is_stratified_and_fixed():
    labels = np.repeat([0, 1, 2], [100, 50, 10])
    mask = stratified_split(labels, 0.3, seed=7)
    assert [mask[labels == c].sum() for c in range(3)] == [30, 15, 3]
    np.testing.assert_array_equal(mask, stratified_split(labels, 0.3, seed=7))
    assert not np.array_equal(mask, stratified_split(labels, 0.3, seed=8))


def test_sample_dataset_is_cats_and_dogs_700_300(real_cache):
    root = prepare_cats_vs_dogs(real_cache)
    train = list_image_folder(root / "train")
    validation = list_image_folder(root / "validation", train.class_names)
    assert train.class_names == ["cat", "dog"]
    assert np.bincount(train.labels).tolist() == [700, 700]
    assert np.bincount(validation.labels).tolist() == [300, 300]
    assert not set(train.paths) & set(validation.paths)
    assert not {p.rsplit("/", 1)[1] for p in train.paths} & {p.rsplit("/", 1)[1] for p in validation.paths}
