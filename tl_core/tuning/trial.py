"""One trial of a search: the head a configuration describes, trained on precomputed features as every run trains
it (model/head.HeadOnFeatures: the same head, optimizer, schedule and loss; the epochs' batches drawn from (seed,
epoch)), scored after each epoch on the tuning part of each fold (tuning_score).

The trial reports to Ray Tune after every epoch (the mean over folds); the early-stopping scheduler may end it
there. It runs in a Ray actor that Tune reuses from trial to trial, so TensorFlow is imported once per actor.
"""
import math
import os
import time

import tensorflow as tf
from ray import tune

from tl_core import interrupts
from tl_core.config import HeadRecipe, TrainConfig
from tl_core.data.feature_sets import InMemoryFeatures
from tl_core.metrics import SCORES, classification_metrics
from tl_core.model.head import HeadOnFeatures

TUNING_ACCURACY, TUNING_LOSS, TUNING_SCORE = "tuning_accuracy", "tuning_loss", "tuning_score"
TUNING_METRICS = {name: f"tuning_{name}" for name in SCORES}


def tuning_score(value: float, loss: float) -> float:
    """What the search maximises: the tuning accuracy (or balanced accuracy, or macro-F1), ties broken by the tuning
    loss. Accuracy on a few hundred images moves in coarse steps and many trials tie; a loss gap of 1 weighs as 0.1 %
    of accuracy."""
    return value - loss / 1000


def _use_threads(threads: int) -> None:
    """TensorFlow's thread pools to the trial's CPUs (by default each process takes every core of the machine)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # a reused actor: set by its first trial
        pass


class FoldHead:
    """A trial's head for one fold: fits on the fold's fitting part, scored on its tuning part."""

    def __init__(self, recipe: HeadRecipe, fold, class_names: list, prior):
        self.fold, self.class_names = fold, class_names
        self.features = InMemoryFeatures(fold.fit_features, fold.fit_labels)
        self.head = HeadOnFeatures(recipe, fold.fit_features.shape[1], len(class_names),
                                   steps_per_epoch=math.ceil(len(self.features) / recipe.batch_size), prior=prior)

    def train_epoch(self, epoch: int) -> dict:
        """One epoch (0-based) of fitting; the metrics on the tuning part."""
        self.head.fit(self.features, epoch, epoch + 1)
        return classification_metrics(self.fold.tune_labels, self.head.logits(self.fold.tune_features), self.class_names)


def run_trial(params: dict, *, data, base: dict, threads: int, score: str = "accuracy") -> None:
    """Ray Tune's function trainable: base (a TrainConfig dict) with the trial's params, trained on data
    (features.TuningData) epoch by epoch, scored by `score` (one of SCORES)."""
    interrupts.drop_exit_signals_in_callbacks()
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")  # read when the GPU is first used: trials may share one
    _use_threads(threads)
    tf.get_logger().setLevel("ERROR")  # not a retracing warning for every fold's new model
    config = TrainConfig.from_dict({**base, **params})
    started = time.perf_counter()
    heads = [FoldHead(config.head_recipe, fold, data.class_names, data.prior) for fold in data.folds]
    for epoch in range(config.epochs):
        folds = [head.train_epoch(epoch) for head in heads]
        means = {name: sum(fold[name] for fold in folds) / len(folds) for name in (*SCORES, "loss")}
        tune.report({TUNING_SCORE: tuning_score(means[score], means["loss"]),
                     **{TUNING_METRICS[name]: means[name] for name in SCORES}, TUNING_LOSS: means["loss"],
                     "epochs_run": epoch + 1, "seconds": time.perf_counter() - started})
