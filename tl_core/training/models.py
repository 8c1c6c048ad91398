"""What a run trains: the classifier, the model fit() trains in each phase, their optimizers and checkpoint state.

Phases: "head" (the frozen backbone; on cached features when they are used) for config.epochs,
then "fine_tune" (the top backbone layers with the head, at a low learning rate) for
config.fine_tune_epochs. Everything is built under the strategy's scope.
"""
import numpy as np
import tensorflow as tf
import tf_keras

from tl_core.config import FINE_TUNE, HEAD, TrainConfig
from tl_core.data.step import training_model
from tl_core.model import assets
from tl_core.model.backbones import keras_backbone
from tl_core.model.classifier import build_classifier, compile_classifier, feature_dim, unfreeze_top_layers
from tl_core.model.head import HeadOnFeatures, compile_head


def phase_of(config: TrainConfig, epoch: int) -> str:
    """The phase epoch (0-based) belongs to; epoch == the total means the phase the run ended in."""
    return FINE_TUNE if config.fine_tune_epochs and epoch >= config.epochs else HEAD


class Models:
    def __init__(self, config: TrainConfig, handle: str, num_classes: int, strategy: tf.distribute.Strategy, log, *,
                 steps_per_epoch: int, prior: np.ndarray | None = None, loaded_backbone=None):
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
                                               adapt_batchnorm=config.adapt_batchnorm, loaded_backbone=loaded_backbone)
            # The pipeline's uint8 batches are scaled (and augmented) inside the step, on the device.
            self.on_images = training_model(self.classifier, config.image_size, config.augment)
            # With cached features only the head runs in the head phase: it is fitted on its own.
            if config.uses_feature_cache:
                self.on_features = HeadOnFeatures(config.head_recipe, feature_dim(self.classifier), num_classes,
                                                  steps_per_epoch, prior, head=self.classifier.get_layer("head"))
                self.optimizer = self.on_features.optimizer
            else:
                self.on_features = None
                self.optimizer = compile_head(self.on_images, config.head_recipe, steps_per_epoch, prior)
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

    def trainer(self, phase: str) -> tf.keras.Model:
        """The model on images fit() trains in this phase (the head on cached features is on_features); the first
        fine-tuning call unfreezes the backbone's top."""
        if phase == HEAD:
            return self.on_images
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
