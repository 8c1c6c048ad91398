"""What a run trains: the classifier, the model fit() trains in each phase, their optimizers and checkpoint state.

Phases: "head" (the frozen backbone; on cached features when they are used) for config.epochs,
then "fine_tune" (the top backbone layers with the head, at a low learning rate) for
config.fine_tune_epochs. Everything is built under the strategy's scope.
"""
import math

import numpy as np
import tensorflow as tf
import tf_keras

from tl_core.config import TrainConfig
from tl_core.model import assets
from tl_core.model.backbones import keras_backbone
from tl_core.model.classifier import build_classifier, compile_classifier, head_model, unfreeze_top_layers
from tl_core.training.step import training_model

HEAD, FINE_TUNE = "head", "fine_tune"


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


def phase_of(config: TrainConfig, epoch: int) -> str:
    """The phase epoch (0-based) belongs to; epoch == the total means the phase the run ended in."""
    return FINE_TUNE if config.fine_tune_epochs and epoch >= config.epochs else HEAD


class Models:
    def __init__(self, config: TrainConfig, handle: str, num_classes: int, strategy: tf.distribute.Strategy, log, *,
                 steps_per_epoch: int, prior: np.ndarray | None = None):
        self.config, self.strategy, self.log, self.prior = config, strategy, log, prior
        self.steps_per_epoch = steps_per_epoch
        with strategy.scope():
            # Fine-tuning needs the backbone's layers and bf16 its Keras layers: the built-in one is then
            # built as a Keras model (the same weights as its SavedModel).
            visible = (keras_backbone(config.backbone, assets.cache_dir(config.cache_dir), bf16=config.bf16)
                       if config.fine_tune_epochs or config.bf16 or config.adapt_batchnorm else None)
            self.classifier = build_classifier(handle, num_classes, config.image_size, keras_backbone=visible,
                                               head_hidden=config.head_hidden, head_dropout=config.head_dropout,
                                               head_l2=config.head_l2, seed=config.seed,
                                               adapt_batchnorm=config.adapt_batchnorm)
            # The pipeline's uint8 batches are scaled (and augmented) inside the step, on the device.
            self.on_images = training_model(self.classifier, config.image_size, config.augment)
            # With cached features only the head runs in the head phase: it is fitted on its own.
            self.on_features = head_model(self.classifier) if config.uses_feature_cache else None
            self.optimizer = compile_head(self.head_trainer, config, steps_per_epoch, prior,
                                          whole_epochs=self.on_features is not None)
            self.fine_tune_optimizer = tf_keras.optimizers.Adam(config.fine_tune_learning_rate)
        # A frozen backbone never changes, and its SavedModel's thousands of objects made every epoch's checkpoint
        # cost 0.7 s of graph traversal alone: the checkpoint holds the head, unless the backbone trains.
        trains_backbone = bool(config.fine_tune_epochs or config.adapt_batchnorm)
        self.state = self.full_state() if trains_backbone else self.head_state()
        self.fine_tuning = False

    def head_state(self) -> tf.train.Checkpoint:
        """The head and its optimizer: everything that changes while the backbone is frozen."""
        return tf.train.Checkpoint(head=self.classifier.get_layer("head"), optimizer=self.optimizer)

    def full_state(self) -> tf.train.Checkpoint:
        """The whole classifier and both optimizers."""
        return tf.train.Checkpoint(model=self.classifier, optimizer=self.optimizer,
                                   fine_tune_optimizer=self.fine_tune_optimizer)

    def read_state(self, path: str) -> None:
        """Restore a checkpoint of either kind, whichever this run writes: a run resumed with --fine-tune-epochs reads
        its head-only checkpoint, and runs saved before head-only checkpoints hold the whole model."""
        roots = {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
        state = self.full_state() if "model" in roots else self.head_state()
        state.read(path).assert_existing_objects_matched()

    @property
    def head_trainer(self) -> tf.keras.Model:
        return self.on_features or self.on_images

    def trainer(self, phase: str) -> tf.keras.Model:
        """The model fit() trains in this phase; the first fine-tuning call unfreezes the backbone's top."""
        if phase == HEAD:
            return self.head_trainer
        if not self.fine_tuning:
            with self.strategy.scope():
                unfrozen = unfreeze_top_layers(self.classifier, self.config.fine_tune_layers)
                compile_classifier(self.on_images, self.fine_tune_optimizer, self.config.jit_compile,
                                   label_smoothing=self.config.label_smoothing, class_balance=self.config.class_balance,
                                   prior=self.prior)
            self.fine_tuning = True
            self.log(f"Fine-tuning {len(unfrozen)} backbone layers ({unfrozen[0]} ... {unfrozen[-1]}) and the head at "
                     f"learning rate {self.config.fine_tune_learning_rate:g}", flush=True)
        return self.on_images
