"""The one head trainer (model/head.HeadOnFeatures) and the feature sets it trains on."""
import numpy as np

from tl_core.config import TrainConfig
from tl_core.data.feature_sets import InMemoryFeatures
from tl_core.model.head import HeadOnFeatures


def _features(rows: int, seed: int = 0) -> InMemoryFeatures:
    rng = np.random.default_rng(seed)
    return InMemoryFeatures(rng.standard_normal((rows, 16)).astype(np.float32), rng.integers(3, size=rows).astype(np.int32))


def test_a_restarted_head_trains_as_a_new_one():
    """The audit's folds restart one compiled head instead of building one per fold: its weights, its step count (the
    one-cycle schedule's position) and Adam's moments start again exactly as a new head's do."""
    recipe = TrainConfig(epochs=4, batch_size=32, head_dropout=0.1).head_recipe
    first, second = _features(150, seed=1), _features(110, seed=2)
    reused = HeadOnFeatures(recipe, 16, 3, steps_per_epoch=5)
    reused.fit(first)
    reused.restart()
    reused.fit(second)
    new = HeadOnFeatures(recipe, 16, 3, steps_per_epoch=5)
    new.fit(second)
    assert all(np.array_equal(a, b) for a, b in zip(reused.model.get_weights(), new.model.get_weights()))
    assert np.array_equal(reused.logits(second.features), new.logits(second.features))


def test_the_head_trains_epoch_by_epoch_as_in_one_call():
    """A search's trial fits one epoch at a time (it reports after each); the run fits its epochs in one call: the
    same weights."""
    recipe = TrainConfig(epochs=5, batch_size=32).head_recipe
    features = _features(150)
    by_epoch, at_once = (HeadOnFeatures(recipe, 16, 3, steps_per_epoch=5) for _ in range(2))
    for epoch in range(recipe.num_epochs):
        by_epoch.fit(features, epoch, epoch + 1)
    at_once.fit(features)
    assert all(np.array_equal(a, b) for a, b in zip(by_epoch.model.get_weights(), at_once.model.get_weights()))
