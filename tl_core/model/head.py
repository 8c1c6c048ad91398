"""How the head is compiled wherever it trains (the run, a search's trials, the audit's folds): Adam on the head's
learning rate (constant, or fastai's one-cycle shape), the run's loss."""
import math

import numpy as np
import tensorflow as tf
import tf_keras

from tl_core.config import TrainConfig
from tl_core.model.classifier import compile_classifier


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


def head_learning_rate(config: TrainConfig, steps_per_epoch: int):
    """The head's learning rate: config.learning_rate throughout, or its one-cycle schedule over each of the head's cycles."""
    if config.head_schedule == "one_cycle":
        return OneCycle(config.learning_rate, [end * steps_per_epoch for end in config.head_cycles])
    return config.learning_rate


def compile_head(model: tf.keras.Model, config: TrainConfig, steps_per_epoch: int, prior: np.ndarray | None = None,
                 whole_epochs: bool = False):
    """Compile the model that trains the head as every run does (Adam on head_learning_rate, the run's loss, with the
    training set's class `prior` when config.class_balance uses it); its optimizer. whole_epochs: each call into the
    compiled step runs a whole epoch's steps (for the head on features, whose steps take a millisecond or two: the
    step-by-step calls from Python cost as much)."""
    optimizer = tf_keras.optimizers.Adam(head_learning_rate(config, steps_per_epoch))
    compile_classifier(model, optimizer, config.jit_compile, label_smoothing=config.label_smoothing,
                       class_balance=config.class_balance, prior=prior,
                       steps_per_execution=steps_per_epoch if whole_epochs else 1)
    return optimizer
