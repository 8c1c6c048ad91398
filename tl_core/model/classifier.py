"""The classifier: a frozen TF Hub feature extractor and a new Dense head producing logits."""
import re

import numpy as np
import tensorflow as tf
import tensorflow_hub as hub

keras = tf.keras


class BackboneError(ValueError):
    pass


def read_backbone(handle: str):
    """The backbone's SavedModel, loaded (hub.load); BackboneError if it cannot be."""
    try:
        return hub.load(handle)
    except Exception as error:  # hub raises many types (OSError, ValueError, URLError, ...)
        raise _unloadable(handle, error) from None


def load_backbone(handle: str, image_size: int, loaded=None) -> hub.KerasLayer:
    """hub.KerasLayer(handle), frozen. loaded: the handle's SavedModel read already (by the run's pre-flight check,
    read_backbone), taken instead of reading it again (3-5 s for MobileNetV2); not inside a distribution strategy's
    scope, where the variables must be made."""
    module = loaded if loaded is not None and not tf.distribute.has_strategy() else read_backbone(handle)
    try:
        return hub.KerasLayer(module, input_shape=(image_size, image_size, 3), trainable=False, name="backbone")
    except Exception as error:  # hub raises many types (OSError, ValueError, URLError, ...)
        raise _unloadable(handle, error) from None


def _unloadable(handle: str, error: Exception) -> BackboneError:
    return BackboneError(
        f"could not load backbone {handle!r}: {type(error).__name__}: {str(error)[:300]}\n"
        "TF Hub and Kaggle handles need internet access. Offline, use the built-in "
        "'--backbone mobilenet_v2' or the path of a local SavedModel directory.")


class SeededDropout(keras.layers.Layer):
    """Dropout whose masks are drawn from (seed, the layer's own count of training calls), a variable saved
    with the model: a resumed run draws the masks an uninterrupted one would. (Keras' Dropout draws from a
    process-wide random state, which a resumed process starts again.)"""

    def __init__(self, rate: float, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.seed = rate, seed

    def build(self, input_shape):
        self.calls = self.add_weight(name="calls", shape=(), dtype="int64", initializer="zeros", trainable=False,
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        self.calls.assign_add(1)
        seed = tf.stack([tf.constant(self.seed, tf.int64), self.calls.read_value()])
        keep = tf.random.stateless_uniform(tf.shape(inputs), seed=seed) >= self.rate
        return tf.where(keep, inputs / (1 - self.rate), tf.zeros_like(inputs))

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def make_head(num_classes: int, hidden: int = 0, dropout: float = 0.0, seed: int = 0, l2: float = 0.0) -> keras.layers.Layer:
    """The new head, named "head": the recipe's Dense(num_classes) logits, or, with a hidden layer or dropout,
    [Dropout] -> [Dense(hidden, relu) -> Dropout] -> Dense(num_classes). l2: penalty on the Dense kernels."""
    regularizer = keras.regularizers.L2(l2) if l2 else None
    if not hidden and not dropout:
        return keras.layers.Dense(num_classes, kernel_regularizer=regularizer, name="head")
    layers = [SeededDropout(dropout, seed * 1000)] if dropout else []
    if hidden:
        layers.append(keras.layers.Dense(hidden, activation="relu", kernel_regularizer=regularizer))
        layers += [SeededDropout(dropout, seed * 1000 + 1)] if dropout else []
    return keras.Sequential([*layers, keras.layers.Dense(num_classes, kernel_regularizer=regularizer)], name="head")


def build_classifier(handle: str, num_classes: int, image_size: int,
                     keras_backbone: keras.Model | None = None, *, head_hidden: int = 0,
                     head_dropout: float = 0.0, head_l2: float = 0.0, seed: int = 0,
                     adapt_batchnorm: bool = False, loaded_backbone=None) -> keras.Model:
    """hub.KerasLayer(handle, trainable=False) followed by the head (make_head), which gives logits.

    With keras_backbone (a Keras model whose layers fine-tuning can unfreeze one by one), that model
    is the frozen backbone instead, always called in inference mode (training=False), so its
    BatchNorm layers keep their ImageNet statistics whichever layers are trained later. With
    adapt_batchnorm, its BatchNorm layers alone train instead (and use batch statistics in training).
    loaded_backbone: the handle's SavedModel read already (load_backbone's loaded).
    """
    head = make_head(num_classes, head_hidden, head_dropout, seed, head_l2)
    if keras_backbone is not None:
        backbone = keras.Model(keras_backbone.inputs, keras_backbone.outputs, name="backbone")
        inputs = keras.Input((image_size, image_size, 3))
        if adapt_batchnorm:
            for layer in backbone.layers:
                layer.trainable = isinstance(layer, keras.layers.BatchNormalization)
            return keras.Model(inputs, head(backbone(inputs)), name="classifier")
        backbone.trainable = False
        logits = head(backbone(inputs, training=False))
        return keras.Model(inputs, logits, name="classifier")
    backbone = load_backbone(handle, image_size, loaded_backbone)
    try:  # Keras calls the backbone here, on the input shape
        model = keras.Sequential([backbone, head])
        model.build((None, image_size, image_size, 3))
    except (ValueError, TypeError, tf.errors.OpError) as error:  # e.g. a SavedModel traced for one size only
        detail = re.search(r"Can not cast (.*?)`", str(error))
        raise BackboneError(
            f"backbone {handle!r} does not accept {image_size}x{image_size} RGB images"
            f"{f' (cannot cast {detail.group(1)})' if detail else ''}; use --image-size with the size "
            "the backbone was made for (224 for most ImageNet models)"
        ) from None
    return model


def unfreeze_top_layers(model: keras.Model, count: int) -> list[str]:
    """Make the backbone's top `count` layers trainable (0: all of them), BatchNorm layers excepted.

    Returns the names of the layers that now train. An opaque TF Hub module (hub.KerasLayer) has
    no layers to choose from: only count=0, the whole module, is possible.
    """
    backbone = model.get_layer("backbone")
    if isinstance(backbone, hub.KerasLayer):
        if count:  # backbones.check_backbone_options tells the user before a run starts
            raise BackboneError(f"an opaque TF Hub module has no layers to unfreeze one by one (asked for {count})")
        backbone.trainable = True
        return [backbone.name]
    backbone.trainable = True
    chosen = set(backbone.layers[-count:] if count else backbone.layers)
    for layer in backbone.layers:
        layer.trainable = layer in chosen and not isinstance(layer, keras.layers.BatchNormalization)
    return [layer.name for layer in backbone.layers if layer.trainable and layer.weights]


def class_prior(labels, num_classes: int) -> np.ndarray:
    """Each class's share of the training images (of the whole training set, not one worker's shard)."""
    return np.bincount(np.asarray(labels, np.int64), minlength=num_classes) / max(len(labels), 1)


def training_loss(label_smoothing: float = 0.0, class_balance: str = "none", prior: np.ndarray | None = None):
    """The loss being trained: cross_entropy, or with the class frequencies of the training set (`prior`) taken into
    account, per example:
      weights       each example's loss times 1 / (classes x its class's share): every class weighs the same in
                    the mean, and the weights average 1 over the training set;
      logit_adjust  the loss of logits + log(prior) (Menon et al., "Long-tail learning via logit adjustment", ICLR
                    2021, tau = 1): the model's own logits then estimate the class given the image under a uniform
                    prior, so that its predictions are balanced; nothing else changes at inference.
    With every class equally frequent both are the plain loss: it is returned as it is (the same weights)."""
    if class_balance == "none" or prior is None or np.allclose(prior, prior[0]):
        return cross_entropy(label_smoothing)
    prior = np.maximum(np.asarray(prior, np.float64), 1e-12)  # a class absent from training: a finite offset
    offset = tf.constant(np.log(prior), tf.float32)
    weight = tf.constant(1 / (len(prior) * prior), tf.float32)

    def balanced_cross_entropy(labels, logits):
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        if class_balance == "logit_adjust":
            logits = logits + offset
        if label_smoothing:
            loss = keras.losses.categorical_crossentropy(tf.one_hot(labels, tf.shape(logits)[-1]), logits, from_logits=True,
                                                         label_smoothing=label_smoothing)
        else:
            loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        return loss * tf.gather(weight, labels) if class_balance == "weights" else loss

    return balanced_cross_entropy


def cross_entropy(label_smoothing: float = 0.0):
    """Sparse categorical cross-entropy on logits; with label smoothing, on one-hot labels (Keras 2's sparse loss has
    no smoothing), per example, so that Keras reduces it as it reduces its own losses."""
    if not label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def smoothed_cross_entropy(labels, logits):
        one_hot = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), tf.shape(logits)[-1])
        return keras.losses.categorical_crossentropy(one_hot, logits, from_logits=True, label_smoothing=label_smoothing)

    return smoothed_cross_entropy


def compile_classifier(model: keras.Model, optimizer, jit_compile: bool = False, label_smoothing: float = 0.0,
                       class_balance: str = "none", prior: np.ndarray | None = None, steps_per_execution: int = 1) -> None:
    """The run's loss on logits (training_loss) and accuracy, with the given optimizer (one the run's checkpoint
    tracks). steps_per_execution: training steps per call into the compiled step (the callbacks' batch hooks run once
    per call)."""
    model.compile(
        optimizer=optimizer,
        loss=training_loss(label_smoothing, class_balance, prior),
        metrics=["accuracy"],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )


def feature_dim(model: keras.Model) -> int:
    """The width of the backbone's features: the input width of the head's first Dense layer."""
    return int(next(weight for weight in model.get_layer("head").weights if len(weight.shape) == 2).shape[0])

