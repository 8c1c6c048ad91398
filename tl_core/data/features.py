"""The frozen backbone's features of a source's images: the backbone run once over the pipeline's batches, fed as the
training step feeds them. features_of is what every command that needs features of whole sources calls (the audit, a
search's feature tasks)."""
import numpy as np
import tensorflow as tf

from tl_core.config import BackbonePass
from tl_core.data.images import make_dataset
from tl_core.data.step import as_fed
from tl_core.model.assets import cache_dir
from tl_core.model.backbones import resolve_backbone
from tl_core.model.classifier import build_classifier
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


def features_of(backbone: BackbonePass, parts: list[tuple]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(features, labels) of each (source, description) part: the backbone loaded once, run over each part's images."""
    classifier = build_classifier(resolve_backbone(backbone.backbone, cache_dir(backbone.cache_dir)),
                                  len(parts[0][0].class_names), backbone.image_size)
    return [backbone_features(classifier, source, backbone.image_size, backbone.batch_size, description)
            for source, description in parts]
