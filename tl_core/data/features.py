"""The frozen backbone's features of a source's images: the backbone run once over the pipeline's batches, fed as the
training step feeds them."""
import numpy as np
import tensorflow as tf

from tl_core.data.images import make_dataset
from tl_core.data.step import as_fed
from tl_core.progress import labelled_batch_size, track


def backbone_feature_batches(model: tf.keras.Model, dataset: tf.data.Dataset):
    """(features, labels) numpy batches: the frozen backbone run once over the pipeline's batches, fed as the
    training step feeds them (uint8 scaled to [0, 1]; warped when the batch carries transforms)."""
    backbone = model.get_layer("backbone")
    extract = tf.function(lambda inputs: tf.cast(backbone(as_fed(inputs), training=False), tf.float32))

    for inputs, labels in dataset:
        yield extract(inputs).numpy(), labels.numpy()


def backbone_features(model: tf.keras.Model, source, image_size: int, batch_size: int,
                      description: str) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, D], labels [N]) of every image of a source, in its order: the frozen backbone run once."""
    batches = track(make_dataset(source, image_size, batch_size), len(source), description, size=labelled_batch_size)
    features, labels = zip(*backbone_feature_batches(model, batches))
    return np.concatenate(features), np.concatenate(labels).astype(np.int32)
