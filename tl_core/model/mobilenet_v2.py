"""MobileNetV2 (torchvision layout, width 1.0) rebuilt in tf-keras, loaded from torch weights.

Keras' own MobileNetV2 pads stride-2 convolutions on one side only, which shifts every feature
when it carries torchvision's weights, so the network is built here with torch's symmetric padding.
Layer names are the torch parameter prefixes with dots replaced by underscores.
"""
import numpy as np
import tensorflow as tf

keras = tf.keras

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_DIM = 1280
BN_EPSILON = 1e-5
# (expansion t, output channels c, repeats n, first stride s), as in the paper and torchvision.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


def _conv_bn(x, prefix, filters, kernel, stride=1, depthwise=False, relu6=True):
    """torch's Conv2d(bias=False) + BatchNorm2d (+ ReLU6), with torch's padding."""
    pad = (kernel - 1) // 2
    if pad:
        x = keras.layers.ZeroPadding2D(((pad, pad), (pad, pad)), name=f"{prefix}_pad")(x)
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel, stride, "valid", use_bias=False, name=f"{prefix}_0")(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, stride, "valid", use_bias=False, name=f"{prefix}_0")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.9, name=f"{prefix}_1")(x)
    if relu6:
        x = keras.layers.ReLU(6.0, name=f"{prefix}_relu6")(x)
    return x


def _inverted_residual(x, index, in_channels, out_channels, stride, expansion):
    prefix = f"features_{index}_conv"
    hidden = in_channels * expansion
    y = x
    layer = 0
    if expansion != 1:
        y = _conv_bn(y, f"{prefix}_{layer}", hidden, 1)
        layer += 1
    y = _conv_bn(y, f"{prefix}_{layer}", hidden, 3, stride, depthwise=True)
    layer += 1
    # The projection is a bare conv and BN at positions layer and layer + 1 of torch's Sequential.
    y = keras.layers.Conv2D(out_channels, 1, use_bias=False, name=f"{prefix}_{layer}")(y)
    y = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.9, name=f"{prefix}_{layer + 1}")(y)
    if stride == 1 and in_channels == out_channels:
        y = keras.layers.Add(name=f"features_{index}_add")([x, y])
    return y


def build_mobilenet_v2(num_classes: int = 0, image_size=None) -> keras.Model:
    """MobileNetV2 taking float RGB in [0, 1]; outputs 1280 pooled features, or logits if num_classes."""
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = keras.layers.Normalization(
        mean=IMAGENET_MEAN, variance=np.square(IMAGENET_STD), name="imagenet_normalization"
    )(inputs)
    x = _conv_bn(x, "features_0", 32, 3, 2)
    channels, index = 32, 1
    for expansion, out_channels, repeats, first_stride in INVERTED_RESIDUAL_SETTING:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            x = _inverted_residual(x, index, channels, out_channels, stride, expansion)
            channels, index = out_channels, index + 1
    x = _conv_bn(x, f"features_{index}", FEATURE_DIM, 1)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if num_classes:
        x = keras.layers.Dense(num_classes, name="classifier_1")(x)
    return keras.Model(inputs, x, name="mobilenet_v2")


def torch_to_keras_weights(layer: keras.layers.Layer, state_dict) -> list:
    """The Keras weight list of one layer, from the torch tensors under the same prefix."""
    prefix = layer.name.replace("_", ".")
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [state_dict[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
    if isinstance(layer, keras.layers.Conv2D):
        return [state_dict[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
    if isinstance(layer, keras.layers.BatchNormalization):
        return [state_dict[f"{prefix}.{name}"] for name in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, keras.layers.Dense):
        return [state_dict[f"{prefix}.weight"].T, state_dict[f"{prefix}.bias"]]
    return []


def load_torch_weights(model: keras.Model, state_dict) -> None:
    """Copy a torchvision MobileNetV2 state dict into a model from build_mobilenet_v2, checking shapes."""
    used = set()
    for layer in model.layers:
        weights = torch_to_keras_weights(layer, state_dict)
        if not weights:
            continue
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(w.shape) for w in weights]
        if expected != got:
            raise ValueError(f"layer {layer.name}: torch weights have shapes {got}, expected {expected}")
        layer.set_weights(weights)
        used.add(layer.name.replace("_", "."))
    unused = {
        name for name in state_dict
        if not name.endswith("num_batches_tracked") and name.rsplit(".", 1)[0] not in used
        and not (name.startswith("classifier.") and not any(n.startswith("classifier") for n in used))
    }
    if unused:
        raise ValueError(f"torch weights not used by the model: {sorted(unused)[:5]} ...")
