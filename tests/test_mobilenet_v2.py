"""The torch -> tf-keras MobileNetV2 conversion is exact, and the real weights are what we think."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from tl_core.model.backbones import mobilenet_v2_state_dict, prepare_mobilenet_v2
from tl_core.model.mobilenet_v2 import build_mobilenet_v2, load_torch_weights

# torchvision's MobileNetV2 table, written out again here so the test does not trust the builder.
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
MEAN, STD, EPS = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]), 1e-5


def torchvision_layers():
    """torchvision's module tree as (kind, prefix, in, out, kernel, stride, groups) in forward order."""
    layers = [("conv_bn_relu", "features.0", 3, 32, 3, 2, 1)]
    channels, index = 32, 1
    for expansion, out, repeats, first_stride in SETTINGS:
        for repeat in range(repeats):
            stride, hidden, j = (first_stride if repeat == 0 else 1), channels * expansion, 0
            block = []
            if expansion != 1:
                block.append(("conv_bn_relu", f"features.{index}.conv.{j}", channels, hidden, 1, 1, 1))
                j += 1
            block.append(("conv_bn_relu", f"features.{index}.conv.{j}", hidden, hidden, 3, stride, hidden))
            block.append(("conv_bn", f"features.{index}.conv.{j + 1}", hidden, out, 1, 1, 1))
            layers.append(("block", block, stride == 1 and channels == out))
            channels, index = out, index + 1
    layers.append(("conv_bn_relu", f"features.{index}", channels, 1280, 1, 1, 1))
    return layers


def torch_shapes() -> dict:
    shapes = {}

    def add(kind, prefix, cin, cout, kernel, stride, groups):
        conv, bn = (f"{prefix}.0", f"{prefix}.1") if kind == "conv_bn_relu" else (prefix, prefix[:-1] + str(int(prefix[-1]) + 1))
        shapes[f"{conv}.weight"] = (cout, cin // groups, kernel, kernel)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{bn}.{name}"] = (cout,)
        shapes[f"{bn}.num_batches_tracked"] = ()

    for layer in torchvision_layers():
        for spec in (layer[1] if layer[0] == "block" else [layer]):
            add(*spec)
    shapes["classifier.1.weight"], shapes["classifier.1.bias"] = (1000, 1280), (1000,)
    return shapes


def random_state_dict(seed=0) -> dict:
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in torch_shapes().items():
        if name.endswith("num_batches_tracked"):
            state[name] = np.array(0, dtype=np.int64)
        elif name.endswith("running_var") or (name.endswith(".weight") and len(shape) == 1):
            state[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        else:
            state[name] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    return state


def np_conv(x, weight, stride, groups):
    """torch.nn.functional.conv2d (padding (k-1)//2 on every side) on one image [C, H, W], float64."""
    kernel = weight.shape[-1]
    pad = (kernel - 1) // 2
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    out_h, out_w = (x.shape[1] - kernel) // stride + 1, (x.shape[2] - kernel) // stride + 1
    out = np.zeros((weight.shape[0], out_h, out_w))
    for kh in range(kernel):
        for kw in range(kernel):
            patch = x[:, kh:kh + stride * (out_h - 1) + 1:stride, kw:kw + stride * (out_w - 1) + 1:stride]
            if groups == 1:
                out += np.einsum("oc,chw->ohw", weight[:, :, kh, kw], patch)
            else:  # depthwise
                out += weight[:, 0, kh, kw][:, None, None] * patch
    return out


def np_forward(state, image):
    """torchvision MobileNetV2 logits for one HWC image in [0, 1], in numpy."""
    def conv_bn(x, kind, prefix, cin, cout, kernel, stride, groups):
        conv, bn = (f"{prefix}.0", f"{prefix}.1") if kind == "conv_bn_relu" else (prefix, prefix[:-1] + str(int(prefix[-1]) + 1))
        x = np_conv(x, state[f"{conv}.weight"].astype(np.float64), stride, groups)
        scale = state[f"{bn}.weight"] / np.sqrt(state[f"{bn}.running_var"].astype(np.float64) + EPS)
        x = (x - state[f"{bn}.running_mean"][:, None, None]) * scale[:, None, None] + state[f"{bn}.bias"][:, None, None]
        return np.clip(x, 0, 6) if kind == "conv_bn_relu" else x

    x = ((image - MEAN) / STD).transpose(2, 0, 1)
    for layer in torchvision_layers():
        if layer[0] == "block":
            y = x
            for spec in layer[1]:
                y = conv_bn(y, *spec)
            x = x + y if layer[2] else y
        else:
            x = conv_bn(x, *layer)
    features = x.mean(axis=(1, 2))
    return features, features @ state["classifier.1.weight"].T + state["classifier.1.bias"]


def test_conversion_matches_numpy_reference_of_torch_layers():
    state = random_state_dict()
    model = build_mobilenet_v2(num_classes=1000)
    load_torch_weights(model, state)
    images = np.random.default_rng(1).uniform(0, 1, (2, 40, 40, 3))
    logits = model(images.astype(np.float32), training=False).numpy()
    for image, got in zip(images, logits):
        _, expected = np_forward(state, image)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_conversion_rejects_mismatched_weights():
    state = random_state_dict()
    state["features.3.conv.1.0.weight"] = state["features.3.conv.1.0.weight"][:-1]
    with pytest.raises(ValueError, match="features_3_conv_1_0"):
        load_torch_weights(build_mobilenet_v2(), state)


@pytest.fixture(scope="module")
def real_state_dict(real_cache):
    return mobilenet_v2_state_dict(real_cache)


def test_real_weights_names_shapes_and_fingerprint(real_state_dict):
    assert len(real_state_dict) == 314
    assert {name: value.shape for name, value in real_state_dict.items()} == torch_shapes()
    # Pinned, and the same on every CPU: the stored float32 weights themselves, summed in float64 (a sum of at most a
    # few thousand float32 values is exact to ~1e-13 in any order, far inside abs=1e-9); nothing here is computed in
    # float32 by a kernel that differs between instruction sets.
    assert float(real_state_dict["features.0.0.weight"].astype(np.float64).sum()) == pytest.approx(-0.7730716340520303, abs=1e-9)
    assert float(real_state_dict["features.18.1.running_var"].astype(np.float64).sum()) == pytest.approx(24.652515053749084, abs=1e-9)
    assert int(real_state_dict["features.0.1.num_batches_tracked"]) == 1431430


def _photo(name, crop=None):
    from skimage import data

    image = getattr(data, name)()
    if crop:
        image = image[crop]
    return tf.image.resize(image[None].astype(np.float32) / 255.0, (224, 224)).numpy()


def test_real_weights_classify_imagenet_photos(real_state_dict):
    model = build_mobilenet_v2(num_classes=1000, image_size=224)
    load_torch_weights(model, real_state_dict)
    logits = model(np.concatenate([_photo("chelsea"), _photo("coffee")]), training=False).numpy()
    assert logits.argmax(axis=1).tolist() == [285, 967]  # Egyptian cat, espresso


def test_exported_backbone_is_a_meaningful_feature_extractor(real_cache):
    layer = hub.KerasLayer(str(prepare_mobilenet_v2(real_cache)), input_shape=(224, 224, 3), trainable=False)
    crop = (slice(50, 250), slice(50, 350))
    features = layer(np.concatenate([_photo("chelsea"), _photo("chelsea", crop), _photo("coffee")])).numpy()
    assert features.shape == (3, 1280)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    same_cat, cat_vs_coffee = features[0] @ features[1], features[0] @ features[2]
    assert same_cat > 0.8 and cat_vs_coffee < 0.6  # a random-init network gives 0.98+ for both
