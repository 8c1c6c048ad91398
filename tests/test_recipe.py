"""The default recipe (augmented feature bank, head schedule) and the seed's recipe, one switch away."""
import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import StopAfter, tiny_config
from reference_training import assert_same_weights, final_head, trained_on_images_epoch_by_epoch
from jobs.train import config_from_args, parse_args
from tl_core.config import ADDED_FIELDS, CONFIG_VERSION, SEED_RECIPE, VERSION_KEY, TrainConfig
from tl_core.data.images import list_image_folder, make_dataset
from tl_core.model.classifier import build_classifier
from tl_core.run_dir import prepare_run_dir
from tl_core.training.distribute import Worker
from tl_core.data.feature_sets import InMemoryBank
from tl_core.model.head import OneCycle
from tl_core.data.step import as_fed
from tl_core.training.train import Models, cached_training_features, train

def test_recipe_seed_is_the_classic_recipe():
    seed = config_from_args(parse_args(["--recipe", "seed"]))
    assert (seed.feature_views, seed.epochs, seed.head_schedule, seed.head_hidden, seed.head_dropout) == (0, 6, "constant", 0, 0.0)
    assert (seed.learning_rate, seed.batch_size, seed.augment, seed.fine_tune_epochs) == (1e-3, 100, True, 0)
    assert not seed.uses_feature_cache
    assert config_from_args(parse_args(["--recipe", "seed", "--epochs", "9"])).epochs == 9  # flags still win
    assert config_from_args(parse_args([])) == TrainConfig()


def test_the_seed_recipe_trains_to_the_weight_as_before(tiny_backbone, colour_dataset, tmp_path):
    """The seed's recipe (augmentation in every epoch's step) ends with the weights of the per-epoch fit() loop it was
    trained with before one fit() per phase, from the same start, on this machine (tests/reference_training.py)."""
    config = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "seed"))  # SEED_RECIPE, tiny
    metrics = train(config)
    assert not metrics["run"]["cached_features"]  # on the images, every epoch
    expected = trained_on_images_epoch_by_epoch(config, list_image_folder(colour_dataset / "train"))
    assert_same_weights(final_head(tmp_path / "seed"), expected)


def _bank(tiny_backbone, colour_dataset, tmp_path, views=3):
    config = tiny_config(tiny_backbone, colour_dataset, tmp_path, feature_views=views)
    shard = list_image_folder(colour_dataset / "train")
    models = Models(config, tiny_backbone, 2, tf.distribute.get_strategy(), print, steps_per_epoch=6)
    return config, shard, models, cached_training_features(config, models, shard, Worker(), tmp_path / "features")


def test_the_feature_bank_holds_reproducible_augmented_views(tiny_backbone, colour_dataset, tmp_path):
    config, shard, models, bank = _bank(tiny_backbone, colour_dataset, tmp_path)
    assert isinstance(bank, InMemoryBank) and bank.features.shape[:2] == (3, len(shard))
    assert not np.allclose(bank.features[1], bank.features[2])  # each view is augmented differently
    again = _bank(tiny_backbone, colour_dataset, tmp_path)[3]
    np.testing.assert_array_equal(again.features, bank.features)
    backbone = models.classifier.get_layer("backbone")
    # View 0 is the backbone on the images as they are; view 2 on the images as the seed's recipe augments them
    # in epoch 2.
    for view, augmented in ((0, False), (2, True)):
        batch, labels = next(iter(make_dataset(shard, config.image_size, config.batch_size, augment_images=augmented,
                                               seed=config.seed, epoch=view)))
        expected = backbone(as_fed(batch), training=False).numpy()
        np.testing.assert_allclose(bank.features[view, :len(labels)], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(bank.labels[:len(labels)], labels.numpy())


def test_each_epoch_draws_one_view_per_image_from_seed_and_epoch(tiny_backbone, colour_dataset, tmp_path):
    _, shard, _, bank = _bank(tiny_backbone, colour_dataset, tmp_path)

    def epoch(number):
        batches = bank.epochs(8, seed=3, first=number, end=number + 1, steps=-(-len(shard) // 8))
        return np.concatenate([features for features, _ in batches.as_numpy_iterator()])

    np.testing.assert_array_equal(epoch(0), epoch(0))
    rows = {tuple(np.round(row, 5)) for row in bank.features.reshape(-1, bank.features.shape[-1])}
    drawn = epoch(0)
    assert all(tuple(np.round(row, 5)) in rows for row in drawn) and len(drawn) == len(shard)
    views_used = {int(np.argmin([np.abs(bank.features[v] - row).sum(axis=1).min() for v in range(3)])) for row in drawn}
    assert views_used == {0, 1, 2}  # views mixed within an epoch
    assert not np.array_equal(epoch(0), epoch(1))


def test_a_spilled_bank_streams_one_view_per_epoch(tiny_backbone, colour_dataset, tmp_path):
    config = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "run", feature_views=2,
                                         feature_cache_memory_mb=0, epochs=3))
    metrics = train(config)
    assert metrics["run"]["features_on_disk"] and metrics["accuracy"] >= 0.9
    assert sorted(p.name for p in (tmp_path / "run" / "features" / "worker-0").iterdir()) == ["view-0.parquet",
                                                                                              "view-1.parquet"]


def _weights(run_dir) -> list:
    return [v.numpy() for v in tf.saved_model.load(f"{run_dir}/model").model.variables]  # layer names differ by counter


def test_resume_is_exact_with_the_bank_the_schedule_and_a_deeper_head(tiny_backbone, colour_dataset, tmp_path):
    settings = dict(feature_views=2, head_schedule="one_cycle", head_hidden=16, head_dropout=0.2, epochs=6)
    straight = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "straight", **settings))
    train(straight)
    interrupted = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "resumed", **settings))
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, callbacks=[StopAfter(3)])
    train(prepare_run_dir(interrupted, resume=True))
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6]
    rates = [row["learning_rate"] for row in history]
    assert rates[0] < rates[1] and rates[-1] < rates[2]  # the one-cycle schedule, across the interruption
    expected, got = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert len(expected) == len(got) > 4  # the backbone's, the hidden layer's and the output layer's
    for want, have in zip(expected, got):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6)


def test_one_cycle_warms_up_then_decays_to_zero():
    schedule = OneCycle(1e-3, [100])
    rates = [float(schedule(step)) for step in range(101)]
    assert rates[0] == pytest.approx(1e-3 / 25) and max(rates) == pytest.approx(1e-3) and rates[25] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(rates[:25], rates[1:26])) and all(a >= b for a, b in zip(rates[25:], rates[26:]))
    assert rates[100] == pytest.approx(0, abs=1e-12)


def test_the_feature_bank_picture_shows_the_views_the_bank_holds(tiny_backbone, colour_dataset, tmp_path):
    from tl_core.training.train import fed_batch

    config = tiny_config(tiny_backbone, colour_dataset, tmp_path, feature_views=3)
    shard = list_image_folder(colour_dataset / "train")
    images, captions, title = fed_batch(config, shard, limit=8)
    assert len(images) == 8 and "view 0 (as they are) and view 1 (augmented), of 3 views" in title
    for view in (0, 1):  # the bank's own views of the first 4 images, in its order
        batch, labels = next(iter(make_dataset(shard, config.image_size, config.batch_size, augment_images=view > 0,
                                               seed=config.seed, epoch=view)))
        np.testing.assert_array_equal(np.stack(images[view::2]), as_fed(batch).numpy()[:4])
        assert captions[view::2] == [f"{shard.class_names[label]}, view {view}" for label in labels.numpy()[:4]]
    with pytest.raises(ValueError, match="feature_views 1 holds only view 0"):
        TrainConfig(augment=True, feature_views=1)


def test_a_second_cycle_repeats_the_shape_over_the_added_steps():
    one, two = OneCycle(1e-3, [100]), OneCycle(1e-3, [100, 140])
    assert [float(two(step)) for step in range(100)] == [float(one(step)) for step in range(100)]  # the first unchanged
    rates = [float(two(step)) for step in range(100, 141)]
    assert rates[0] == pytest.approx(1e-3 / 25) and rates[10] == pytest.approx(1e-3)  # warm-up: a quarter of 40 steps
    assert rates[40] == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("first, epochs, ends, later, later_ends", [
    (60, 120, [60, 120], 180, [60, 120, 180]),  # trained longer, twice: a cycle per extension
    (60, 40, [60], 60, None),  # stopped early within the planned cycle, then resumed to its end: that one cycle
    (60, 60, None, 60, None),  # an interrupted run resumed as it was asked for
])
def test_training_longer_adds_a_cycle_and_training_less_keeps_it(first, epochs, ends, later, later_ends):
    config = TrainConfig(epochs=first).trained_longer(epochs)
    assert (config.epochs, config.head_cycle_ends) == (epochs, ends)
    assert TrainConfig.from_dict(config.to_dict()) == config  # saved in config.json
    assert config.trained_longer(later).head_cycle_ends == later_ends
    seed = TrainConfig(**SEED_RECIPE).trained_longer(12)  # a constant rate has no cycles
    assert (seed.epochs, seed.head_cycle_ends) == (12, None)


def test_a_deeper_head_exports_and_serves(tiny_backbone):
    model = build_classifier(tiny_backbone, 3, 32, head_hidden=8, head_dropout=0.5)
    images = tf.random.uniform([2, 32, 32, 3])
    np.testing.assert_allclose(model(images, training=False), model(images, training=False))  # no dropout at inference
    assert model(images).shape == (2, 3)


def test_label_smoothing_penalises_confident_logits_and_l2_adds_a_penalty(tiny_backbone):
    from tl_core.model.classifier import cross_entropy

    labels, logits = tf.constant([0, 1]), tf.constant([[10.0, -10.0], [-10.0, 10.0]])
    assert float(tf.reduce_mean(cross_entropy(0.0)(labels, logits))) < 1e-6
    smoothed = cross_entropy(0.1)(labels, logits)
    assert smoothed.shape == (2,)  # per example: Keras reduces it like its own losses
    np.testing.assert_allclose(smoothed, [1.0, 1.0], rtol=1e-4)  # 0.05 of the mass on the other class, 20 nats away
    assert not build_classifier(tiny_backbone, 2, 32).losses
    model = build_classifier(tiny_backbone, 2, 32, head_hidden=4, head_l2=1e-3)
    assert len(model.losses) == 2 and all(float(loss) > 0 for loss in model.losses)  # both Dense kernels


def test_the_head_options_train_and_round_trip_through_the_saved_config(tiny_backbone, colour_dataset, tmp_path):
    config = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "run", augment=False, epochs=3,
                                         head_hidden=8, head_l2=1e-4, label_smoothing=0.1))
    metrics = train(config)
    assert metrics["accuracy"] >= 0.9
    assert TrainConfig.from_json(tmp_path / "run" / "config.json") == config


def saved_before_versions(config: TrainConfig) -> dict:
    """config.json as the job wrote it before the schema version and the head options existed."""
    return {key: value for key, value in config.to_dict().items() if key not in (*ADDED_FIELDS, VERSION_KEY, "head_cycle_ends")}


def test_a_config_saved_before_the_head_options_keeps_the_head_it_trained(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(saved_before_versions(TrainConfig(**SEED_RECIPE))))
    assert TrainConfig.from_json(tmp_path / "config.json") == TrainConfig(**SEED_RECIPE)


def test_a_hand_written_config_means_the_chosen_recipe_plus_its_values(tmp_path):
    (tmp_path / "hand.json").write_text('{"epochs": 10}')
    assert config_from_args(parse_args(["--config", str(tmp_path / "hand.json")])) == TrainConfig(epochs=10)
    seed = config_from_args(parse_args(["--config", str(tmp_path / "hand.json"), "--recipe", "seed"]))
    assert seed == TrainConfig(**{**SEED_RECIPE, "epochs": 10})
    saved = TrainConfig(head_hidden=0, epochs=3).to_dict()  # what a run writes: every field, and the version
    assert saved[VERSION_KEY] == CONFIG_VERSION and TrainConfig.from_dict(saved) == TrainConfig(head_hidden=0, epochs=3)
    (tmp_path / "newer.json").write_text(json.dumps({**saved, VERSION_KEY: CONFIG_VERSION + 1}))
    with pytest.raises(ValueError, match="written by a newer release"):
        config_from_args(parse_args(["--config", str(tmp_path / "newer.json")]))
    (tmp_path / "broken.json").write_text('{"epochs": ')
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        TrainConfig.from_json(tmp_path / "broken.json")


def test_a_config_of_version_2_keeps_the_plain_loss_it_trained_with():
    saved = {**TrainConfig().to_dict(), VERSION_KEY: 2}
    del saved["class_balance"]  # added in version 3, whose default is logit_adjust
    assert TrainConfig.from_dict(saved) == TrainConfig(class_balance="none")
    assert TrainConfig().class_balance == "logit_adjust" and TrainConfig(**SEED_RECIPE).class_balance == "none"


def test_a_run_saved_before_versions_resumes_and_reproduces_as_before(tiny_backbone, colour_dataset, tmp_path):
    straight = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "straight", augment=False, epochs=3))
    train(straight)
    old = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "old", augment=False, epochs=2))
    train(old)
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved_before_versions(old)))
    resumed = config_from_args(parse_args(["--resume", "--output-dir", str(tmp_path / "old"), "--epochs", "3"]))
    train(prepare_run_dir(resumed, resume=True))
    expected, got = (tf.saved_model.load(str(tmp_path / name / "model")).model.variables for name in ("straight", "old"))
    for want, have in zip(expected, got):
        np.testing.assert_allclose(have.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    reproduced = config_from_args(parse_args(["--config", str(tmp_path / "old" / "config.json")]))
    assert reproduced == dataclasses.replace(straight, output_dir=None)  # the seed recipe's head, not today's default
