"""The head on backbone features, trained the same way wherever it trains (the run, a search's trials, the audit's
folds): HeadOnFeatures builds it (or takes the classifier's own), compiles it (Adam on the head's learning rate,
constant or fastai's one-cycle shape; the run's loss) and fits it on a FeatureSet, each epoch's batches drawn from
(seed, epoch)."""
import math
import typing

import numpy as np
import tensorflow as tf
import tf_keras

from tl_core.config import HeadRecipe
from tl_core.model.classifier import compile_classifier, make_head


class OneCycle(tf_keras.optimizers.schedules.LearningRateSchedule):
    """fastai's fit_one_cycle shape, once per cycle: a cosine warm-up from peak / 25 to peak over the first quarter of
    the cycle's steps, then a cosine decay to zero. cycle_ends: the step at which each cycle ends ([total steps] for one
    cycle; a run trained longer adds one). A function of the optimizer's step count: resuming is exact."""

    def __init__(self, peak: float, cycle_ends: list[int], warmup: float = 0.25):
        self.peak, self.cycle_ends, self.warmup = peak, [int(end) for end in cycle_ends], warmup
        self.starts = [0, *self.cycle_ends[:-1]]
        self.lengths = [max(end - start, 2) for start, end in zip(self.starts, self.cycle_ends)]

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        cycle = tf.reduce_sum(tf.cast(step >= tf.constant(self.cycle_ends[:-1], tf.float32), tf.int32))  # the last runs on
        step = step - tf.gather(tf.constant(self.starts, tf.float32), cycle)
        total = tf.gather(tf.constant(self.lengths, tf.float32), cycle)
        warm = tf.gather(tf.constant([float(max(1, round(length * self.warmup))) for length in self.lengths]), cycle)
        start = self.peak / 25
        rising = start + (self.peak - start) * (1 - tf.cos(math.pi * tf.minimum(step / warm, 1.0))) / 2
        falling = self.peak * (1 + tf.cos(math.pi * tf.clip_by_value((step - warm) / (total - warm), 0.0, 1.0))) / 2
        return tf.where(step < warm, rising, falling)

    def get_config(self) -> dict:
        return {"peak": self.peak, "cycle_ends": self.cycle_ends, "warmup": self.warmup}


def head_learning_rate(recipe: HeadRecipe, steps_per_epoch: int):
    """The head's learning rate: recipe.learning_rate throughout, or its one-cycle schedule over each of the head's cycles."""
    if recipe.schedule == "one_cycle":
        return OneCycle(recipe.learning_rate, [end * steps_per_epoch for end in recipe.cycle_ends])
    return recipe.learning_rate


def compile_head(model: tf.keras.Model, recipe: HeadRecipe, steps_per_epoch: int, prior: np.ndarray | None = None,
                 whole_epochs: bool = False):
    """Compile the model that trains the head as every run does (Adam on head_learning_rate, the run's loss, with the
    training set's class `prior` when recipe.class_balance uses it); its optimizer. whole_epochs: each call into the
    compiled step runs a whole epoch's steps (for the head on features, whose steps take a millisecond or two: the
    step-by-step calls from Python cost as much)."""
    optimizer = tf_keras.optimizers.Adam(head_learning_rate(recipe, steps_per_epoch))
    compile_classifier(model, optimizer, recipe.jit_compile, label_smoothing=recipe.label_smoothing,
                       class_balance=recipe.class_balance, prior=prior,
                       steps_per_execution=steps_per_epoch if whole_epochs else 1)
    return optimizer


class FeatureSet(typing.Protocol):
    """Backbone features of a set of images with their labels, wherever they are held (data/feature_sets.py)."""

    def __len__(self) -> int: ...

    def epochs(self, batch_size: int, *, seed: int, first: int, end: int, steps: int) -> tf.data.Dataset:
        """The (features, labels) batches of epochs first .. end - 1, each epoch's order drawn from (seed, epoch)."""


class HeadOnFeatures:
    """The head as a model on backbone features: `head` (the classifier's own head layer: shared weights) or a new
    one from the recipe, seeded by it; compiled by compile_head, a whole epoch per call into the compiled step.
    steps_per_epoch: what the learning-rate schedule counts an epoch as."""

    def __init__(self, recipe: HeadRecipe, dim: int, num_classes: int, steps_per_epoch: int,
                 prior: np.ndarray | None = None, head: tf.keras.layers.Layer | None = None):
        if head is None:
            tf.keras.utils.set_random_seed(recipe.seed)
            head = make_head(num_classes, recipe.hidden, recipe.dropout, recipe.seed, recipe.l2)
        self.recipe, self.steps_per_epoch = recipe, steps_per_epoch
        self.model = tf.keras.Sequential([tf.keras.Input((dim,)), head], name="head_on_features")
        self.optimizer = compile_head(self.model, recipe, steps_per_epoch, prior, whole_epochs=True)
        self.initial = self.model.get_weights()

    def fit(self, features: FeatureSet, first: int = 0, end: int | None = None, callbacks=()) -> None:
        """Train epochs first .. end - 1 (default: to the recipe's last) on the features."""
        end = self.recipe.num_epochs if end is None else end
        steps = math.ceil(len(features) / self.recipe.batch_size)
        self.model.fit(features.epochs(self.recipe.batch_size, seed=self.recipe.seed, first=first, end=end, steps=steps),
                       steps_per_epoch=steps, initial_epoch=first, epochs=end, verbose=0, callbacks=list(callbacks))

    def logits(self, features: np.ndarray) -> np.ndarray:
        return self.model(features, training=False).numpy()

    def restart(self) -> None:
        """Back to the initial weights and a fresh optimizer (step count and moments): a new head, without tracing its
        training step again."""
        self.model.set_weights(self.initial)
        for variable in self.optimizer.variables:
            variable.assign(tf.zeros_like(variable))
