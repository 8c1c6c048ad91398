"""The job's training loop as it was before it was made faster (one fit() per epoch, one training step per call into
the compiled step), kept as the reference a run's weights are checked against, in the same test on the same machine.

Float32 results of the same graph differ between CPUs (oneDNN picks other kernels for other instruction sets and sums
in another order; 60 epochs carry the difference to the 4th significant digit): a number written on one CPU cannot pin
the weights computed on another, so a test trains the reference next to the run instead. The reference starts from
what a run of the configuration starts from, made again from the configuration and its seed (the head's initial
weights, the backbone's features of the training images), and the run's final head is read from the checkpoint it
wrote: the check reads what the run did, not how it is called inside.
"""
import json
import math
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras

from tl_core.config import HEAD, TrainConfig
from tl_core.data.feature_sets import InMemoryFeatures
from tl_core.data.features import backbone_features
from tl_core.model import assets
from tl_core.model.backbones import resolve_backbone
from tl_core.model.classifier import class_prior, make_head
from tl_core.model.head import compile_head
from tl_core.training.distribute import make_strategy
from tl_core.training.models import Models
from tl_core.training.train import epoch_dataset


def run_start(config: TrainConfig, shard) -> Models:
    """The models a run of config on the training images `shard` (one worker) starts with: built as train() builds them,
    right after seeding, so that the head's initial weights are the run's."""
    classes = len(shard.class_names)
    strategy = make_strategy()
    tf.keras.utils.set_random_seed(config.seed)
    return Models(config, resolve_backbone(config.backbone, assets.cache_dir(config.cache_dir)), classes, strategy,
                  lambda *args, **kwargs: None, steps_per_epoch=math.ceil(len(shard) / config.batch_size),
                  prior=class_prior(shard.labels, classes))


def head_trained_epoch_by_epoch(config: TrainConfig, shard) -> list[np.ndarray]:
    """The head's final weights, trained from the run's start on the backbone's features of the images as they are
    (computed as the run computes them: the same batches) as the job did before issue 31: one fit() per epoch of
    features.dataset(epoch), step by step."""
    start = run_start(config, shard)
    features = InMemoryFeatures(*backbone_features(start.classifier, shard, config.image_size, config.batch_size,
                                                   "Reference features"))
    head = make_head(len(shard.class_names), config.head_hidden, config.head_dropout, config.seed, config.head_l2)
    model = tf_keras.Sequential([tf_keras.Input((features.features.shape[-1],)), head])
    head.set_weights(start.classifier.get_layer("head").get_weights())
    compile_head(model, config.head_recipe, start.steps_per_epoch, start.prior)
    for epoch in range(config.epochs):
        model.fit(features.dataset(config.batch_size, seed=config.seed, epoch=epoch), initial_epoch=epoch, epochs=epoch + 1,
                  verbose=0)
    return head.get_weights()


def trained_on_images_epoch_by_epoch(config: TrainConfig, shard) -> list[np.ndarray]:
    """The head's final weights, trained from the run's start on the images (augmented in every epoch's step, the seed's
    recipe) as the job did before issue 31: one fit() per epoch of that epoch's dataset."""
    start = run_start(config, shard)
    for epoch in range(config.epochs):
        start.trainer(HEAD).fit(epoch_dataset(config, shard, epoch), initial_epoch=epoch, epochs=epoch + 1, verbose=0)
    return start.classifier.get_layer("head").get_weights()


def final_head(run_dir) -> list[np.ndarray]:
    """The head's weights in the last checkpoint a run wrote (a frozen backbone's run checkpoints the head alone), in
    the order of the head layer's get_weights(): each Dense layer's kernel, then its bias."""
    latest = Path(run_dir) / "checkpoints"
    reader = tf.train.load_checkpoint(str(latest / json.loads((latest / "latest.json").read_text())["directory"] / "state"))
    names = [name for name in reader.get_variable_to_shape_map()
             if name.startswith("head/") and name.endswith(("/kernel/.ATTRIBUTES/VARIABLE_VALUE", "/bias/.ATTRIBUTES/VARIABLE_VALUE"))]

    def position(name: str) -> tuple[int, bool]:
        parts = name.split("/")
        layer = int(parts[1].rsplit("-", 1)[1]) if parts[1].startswith("layer_with_weights-") else 0
        return layer, parts[-3] == "bias"

    return [reader.get_tensor(name) for name in sorted(names, key=position)]


def assert_same_weights(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    """Equal to float32's last bits or so: the same batches in the same order, the same steps. (Bit for bit on the
    machines this was written on; another batch order or a step more or less moves every weight by 1e-3 or more.)"""
    assert len(got) == len(expected) and got
    for index, (have, want) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(have, want, rtol=1e-6, atol=1e-7, err_msg=f"head weight {index}")
