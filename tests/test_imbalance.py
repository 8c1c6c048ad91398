"""Imbalanced classes: the class-balance options of the loss (--class-balance)."""
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config, write_colour_dataset
from tl_core.model.classifier import class_prior, cross_entropy, training_loss


def test_the_balanced_losses_are_the_plain_loss_shifted_or_weighted_by_the_prior():
    labels = np.array([0, 0, 0, 1, 2, 0])
    logits = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    prior = class_prior(labels, 3)
    assert prior.tolist() == pytest.approx([4 / 6, 1 / 6, 1 / 6])
    plain = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True).numpy()
    adjusted = tf.keras.losses.sparse_categorical_crossentropy(labels, logits + np.log(prior), from_logits=True).numpy()
    np.testing.assert_allclose(training_loss(0.0, "logit_adjust", prior)(labels, logits).numpy(), adjusted, rtol=1e-5)
    weights = 1 / (3 * prior[labels])
    assert weights.mean() == pytest.approx(1.0)  # over the training set the weights average 1
    np.testing.assert_allclose(training_loss(0.0, "weights", prior)(labels, logits).numpy(), plain * weights, rtol=1e-5)
    smoothed = training_loss(0.1, "logit_adjust", prior)(labels, logits).numpy()
    assert smoothed.shape == (6,) and not np.allclose(smoothed, adjusted)


@pytest.mark.parametrize("balance", ["weights", "logit_adjust"])
def test_with_balanced_classes_either_option_is_the_plain_loss(balance):
    assert type(training_loss(0.0, balance, np.array([0.5, 0.5]))) is type(cross_entropy(0.0))
    assert type(training_loss(0.0, balance, None)) is type(cross_entropy(0.0))


@pytest.mark.parametrize("recipe", ["default", "seed"])  # cached features; images (augmented) every epoch
def test_logit_adjustment_moves_predictions_towards_the_rare_class(tiny_backbone, tmp_path, recipe):
    """Colour images, 40 blue against 4 red in train/: the adjusted model recalls red at least as well."""
    from tl_core.run_dir import prepare_run_dir
    from tl_core.training.train import train

    data = write_colour_dataset(tmp_path / "data", {"train": 40, "validation": 10})
    for extra in sorted((data / "train" / "red").iterdir())[4:]:
        extra.unlink()
    results = {}
    for balance in ("none", "logit_adjust"):
        config = prepare_run_dir(tiny_config(tiny_backbone, data, tmp_path / balance, recipe=recipe, audit=False,
                                             class_balance=balance, epochs=2, learning_rate=0.01))
        results[balance] = train(config)
    red = {balance: next(row for row in metrics["per_class"] if row["class"] == "red")["recall"]
           for balance, metrics in results.items()}
    assert results["logit_adjust"]["loss"] != results["none"]["loss"]  # the adjustment took effect (>= alone: a no-op passes)
    assert red["logit_adjust"] >= red["none"]
    assert results["logit_adjust"]["balanced_accuracy"] >= results["none"]["balanced_accuracy"]


def test_class_balance_is_a_setting_a_search_can_try():
    from tl_core.config import TrainConfig
    from tl_core.tuning.space import check_space

    assert check_space({"class_balance": {"choice": ["none", "weights", "logit_adjust"]}}, TrainConfig())
    with pytest.raises(ValueError, match="class_balance must be"):
        TrainConfig(class_balance="oversample")
