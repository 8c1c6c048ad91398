"""The job's training loop as it was before it was made faster (one fit() per epoch, one training step per call into
the compiled step), kept as the reference a run's weights are checked against, in the same test on the same machine.

Float32 results of the same graph differ between CPUs (oneDNN picks other kernels for other instruction sets and sums
in another order; 60 epochs carry the difference to the 4th significant digit): a number written on one CPU cannot pin
the weights computed on another, so a test trains the reference next to the run instead, from what the run started
with (the head's initial weights, the backbone's features), recorded by record_training().
"""
import numpy as np
import tf_keras

from tl_core.config import TrainConfig
from tl_core.model.classifier import make_head
from tl_core.config import HEAD
from tl_core.model.head import compile_head
from tl_core.training.models import Models
from tl_core.training.train import epoch_dataset


def record_training(monkeypatch) -> dict:
    """What the next train() in this test starts from, filled in as it runs: "models" (its Models) and "made_with"
    (the arguments it was made with), "initial_head" (the head's weights before the first step) and "features" (the
    training features it computed, or None)."""
    import tl_core.training.train as train_module

    seen, real_models, real_features = {}, train_module.Models, train_module.cached_training_features

    def models(*args, **kwargs):
        seen["models"], seen["made_with"] = real_models(*args, **kwargs), (args, kwargs)
        seen["initial_head"] = seen["models"].classifier.get_layer("head").get_weights()
        return seen["models"]

    def features(*args, **kwargs):
        seen["features"] = real_features(*args, **kwargs)
        return seen["features"]

    monkeypatch.setattr(train_module, "Models", models)
    monkeypatch.setattr(train_module, "cached_training_features", features)
    return seen


def head_trained_epoch_by_epoch(config: TrainConfig, seen: dict) -> list[np.ndarray]:
    """The head's final weights, trained from seen["initial_head"] on seen["features"] (the features of the images as
    they are) as the job did before issue 31: one fit() per epoch of features.dataset(epoch), step by step."""
    recorded, features = seen["models"], seen["features"]
    head = make_head(len(recorded.prior), config.head_hidden, config.head_dropout, config.seed, config.head_l2)
    model = tf_keras.Sequential([tf_keras.Input((features.features.shape[-1],)), head])
    head.set_weights(seen["initial_head"])
    compile_head(model, config.head_recipe, recorded.steps_per_epoch, recorded.prior)
    for epoch in range(config.epochs):
        model.fit(features.dataset(config.batch_size, seed=config.seed, epoch=epoch), initial_epoch=epoch, epochs=epoch + 1,
                  verbose=0)
    return head.get_weights()


def trained_on_images_epoch_by_epoch(config: TrainConfig, seen: dict, shard) -> list[np.ndarray]:
    """The head's final weights, trained from seen["initial_head"] on the images (augmented in every epoch's step, the
    seed's recipe) as the job did before issue 31: one fit() per epoch of that epoch's dataset, in a fresh copy of the
    run's models."""
    args, kwargs = seen["made_with"]
    fresh = Models(*args, **kwargs)
    fresh.classifier.get_layer("head").set_weights(seen["initial_head"])
    for epoch in range(config.epochs):
        fresh.trainer(HEAD).fit(epoch_dataset(config, shard, epoch), initial_epoch=epoch, epochs=epoch + 1, verbose=0)
    return fresh.classifier.get_layer("head").get_weights()


def assert_same_weights(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    """Equal to float32's last bits or so: the same batches in the same order, the same steps. (Bit for bit on the
    machines this was written on; another batch order or a step more or less moves every weight by 1e-3 or more.)"""
    assert len(got) == len(expected) and got
    for index, (have, want) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(have, want, rtol=1e-6, atol=1e-7, err_msg=f"head weight {index}")
