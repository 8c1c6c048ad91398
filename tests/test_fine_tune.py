"""Fine-tuning: only the chosen top layers of the backbone move, BatchNorm never does, resume crosses phases."""
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tl_core.model.backbones import keras_backbone
from tl_core.config import SEED_RECIPE, TrainConfig
from tl_core.model.classifier import BackboneError
from tl_core.training.train import train
from tl_core.run_dir import prepare_run_dir


def config_for(colour_dataset, real_cache, output_dir, **overrides) -> TrainConfig:
    values = dict(SEED_RECIPE, data_dir=str(colour_dataset), cache_dir=str(real_cache), image_size=32, batch_size=8, epochs=1,
                  learning_rate=0.05, fine_tune_epochs=2, fine_tune_layers=10, fine_tune_learning_rate=1e-3,
                  augment=False, seed=2, output_dir=str(output_dir))
    return TrainConfig(**{**values, **overrides})


def exported_weights(run_dir) -> dict:
    loaded = tf.saved_model.load(f"{run_dir}/model")
    return {variable.name: variable.numpy() for variable in loaded.model.variables}


@pytest.fixture(scope="module")
def fine_tuned_run(colour_dataset, real_cache, tmp_path_factory):
    config = prepare_run_dir(config_for(colour_dataset, real_cache, tmp_path_factory.mktemp("fine_tune") / "run"))
    train(config)
    return config


def test_fine_tuning_moves_only_the_unfrozen_layers(fine_tuned_run, real_cache):
    config = fine_tuned_run
    pretrained = keras_backbone("mobilenet_v2", real_cache)
    top = pretrained.layers[-10:]
    unfrozen = {weight.name for layer in top if not isinstance(layer, tf.keras.layers.BatchNormalization)
                for weight in layer.weights}
    assert unfrozen  # the top 10 layers hold convolutions
    trained = exported_weights(config.output_dir)
    moved, unchanged = set(), set()
    for weight in pretrained.weights:
        (unchanged if np.array_equal(trained[weight.name], weight.numpy()) else moved).add(weight.name)
    assert moved == unfrozen  # every unfrozen kernel moved; nothing else, BatchNorm statistics included
    assert any("moving_mean" in name for name in unchanged)

    history = json.loads((Path(config.output_dir) / "history.json").read_text())
    assert [row["phase"] for row in history] == ["head", "fine_tune", "fine_tune"]


def test_resume_across_the_start_of_fine_tuning_reaches_the_same_weights(fine_tuned_run, colour_dataset, real_cache,
                                                                         tmp_path):

    class StopBeforeSecondFineTuneEpoch(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    interrupted = prepare_run_dir(config_for(colour_dataset, real_cache, tmp_path / "resumed"))
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, callbacks=[StopBeforeSecondFineTuneEpoch()])
    train(prepare_run_dir(config_for(colour_dataset, real_cache, tmp_path / "resumed"), resume=True))
    expected, got = exported_weights(fine_tuned_run.output_dir), exported_weights(tmp_path / "resumed")
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_an_opaque_hub_backbone_fine_tunes_whole_or_not_at_all(colour_dataset, tiny_backbone, tmp_path):
    common = dict(SEED_RECIPE, data_dir=str(colour_dataset), backbone=tiny_backbone, image_size=32, batch_size=8, epochs=1,
                  fine_tune_epochs=1, fine_tune_learning_rate=1e-2, augment=False)
    with pytest.raises(BackboneError, match="opaque TF Hub module.*--fine-tune-layers 0.*built-in"):
        train(prepare_run_dir(TrainConfig(**common, fine_tune_layers=5, output_dir=str(tmp_path / "a"))))
    config = prepare_run_dir(TrainConfig(**common, fine_tune_layers=0, output_dir=str(tmp_path / "b")))
    train(config)
    frozen = prepare_run_dir(TrainConfig(**{**common, "fine_tune_epochs": 0}, output_dir=str(tmp_path / "c")))
    train(frozen)
    conv = [name for name in exported_weights(config.output_dir) if "conv2d" in name and "kernel" in name]
    assert conv and not np.array_equal(exported_weights(config.output_dir)[conv[0]],
                                       exported_weights(frozen.output_dir)[conv[0]])


def test_bf16_runs_the_backbone_in_bfloat16_and_keeps_float32_logits(colour_dataset, real_cache, tmp_path):
    config = prepare_run_dir(config_for(colour_dataset, real_cache, tmp_path / "bf16", bf16=True, fine_tune_epochs=0,
                                        epochs=4))
    metrics = train(config)
    assert metrics["accuracy"] >= 0.9  # cached bfloat16 features train the float32 head as well
    loaded = tf.saved_model.load(f"{config.output_dir}/model")
    out = loaded.signatures["serving_default"](images=tf.zeros([1, 32, 32, 3]))
    assert out["logits"].dtype == tf.float32
    assert tf.keras.mixed_precision.global_policy().name == "float32"  # the policy did not leak
    backbone = keras_backbone("mobilenet_v2", real_cache, bf16=True)
    assert backbone(tf.zeros([1, 32, 32, 3])).dtype == tf.bfloat16
    assert all(weight.dtype == tf.float32 for weight in backbone.weights)  # float32 variables, bf16 compute


def test_bf16_needs_the_built_in_backbone(colour_dataset, tiny_backbone, tmp_path):
    config = prepare_run_dir(TrainConfig(data_dir=str(colour_dataset), backbone=tiny_backbone, image_size=32,
                                         batch_size=8, bf16=True, output_dir=str(tmp_path / "run")))
    with pytest.raises(BackboneError, match="--bf16 needs the built-in"):
        train(config)


def test_adapting_batchnorm_moves_only_the_batchnorm_layers(colour_dataset, real_cache, tmp_path):
    config = prepare_run_dir(config_for(colour_dataset, real_cache, tmp_path / "bn", fine_tune_epochs=0, epochs=2,
                                        augment=True, feature_views=0, adapt_batchnorm=True))
    metrics = train(config)
    pretrained = keras_backbone("mobilenet_v2", real_cache)
    before = {weight.name: weight.numpy() for weight in pretrained.weights}
    after = exported_weights(config.output_dir)
    batchnorm = {weight.name for layer in pretrained.layers if isinstance(layer, tf.keras.layers.BatchNormalization)
                 for weight in layer.weights}
    moved = {name for name in before if not np.allclose(before[name], after[name], atol=1e-7)}
    assert moved and moved <= batchnorm  # scales, offsets and running statistics; no convolution moved
    assert {name.split("/")[-1] for name in moved} >= {"gamma:0", "beta:0", "moving_mean:0", "moving_variance:0"}
    # Validated through the whole model each epoch (its features change): the exported model agrees.
    history = json.loads((Path(config.output_dir) / "history.json").read_text())
    assert history[-1]["val_accuracy"] == pytest.approx(metrics["accuracy"])


def test_adapting_batchnorm_refuses_cached_features():
    with pytest.raises(ValueError, match="cannot be cached"):
        TrainConfig(adapt_batchnorm=True, feature_views=4)
