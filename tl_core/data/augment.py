"""Keras ImageDataGenerator's random affine augmentation, as batched TensorFlow ops.

Semantics follow ImageDataGenerator.random_transform / apply_affine_transform exactly:
rotation in degrees, shifts as fractions of height/width, shear in *degrees* (so the recipe's
shear_range=0.2 is a 0.2 degree shear, ImageDataGenerator's documented quirk), independent zoom
factors per axis in [1 - zoom, 1 + zoom], bilinear sampling with `nearest` fill, then a horizontal
flip with probability 0.5.

It comes in two halves, so that the per-pixel work runs on the accelerator:
- `random_transforms` draws the parameters and folds each image's matrix and flip into 8 numbers
  (a few dozen flops per image; the host's tf.data pipeline draws a whole epoch's at once);
- `apply_transforms` warps a whole batch with one ImageProjectiveTransformV3 op (GPU kernels exist
  for it), inside the replicated training step: each replica warps its own images on its device.
"""
import dataclasses
import math

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    rotation_range: float = 40.0  # degrees
    width_shift_range: float = 0.2  # fraction of width
    height_shift_range: float = 0.2  # fraction of height
    shear_range: float = 0.2  # degrees, as in ImageDataGenerator
    zoom_range: float = 0.2  # zoom factors drawn from [0.8, 1.2] per axis
    horizontal_flip: bool = True


RECIPE = AugmentConfig()


def sample_params(batch_size, seed, config: AugmentConfig = RECIPE) -> dict:
    """Per-image random parameters, from a stateless seed (shape [2]) so the result is reproducible."""
    seeds = tf.random.split(tf.cast(seed, tf.int64), 7)

    def uniform(i, low, high):
        return tf.random.stateless_uniform([batch_size], seeds[i], low, high)

    return {
        "theta": uniform(0, -config.rotation_range, config.rotation_range),
        "tx": uniform(1, -config.height_shift_range, config.height_shift_range),  # rows
        "ty": uniform(2, -config.width_shift_range, config.width_shift_range),  # columns
        "shear": uniform(3, -config.shear_range, config.shear_range),
        "zx": uniform(4, 1.0 - config.zoom_range, 1.0 + config.zoom_range),  # rows
        "zy": uniform(5, 1.0 - config.zoom_range, 1.0 + config.zoom_range),  # columns
        "flip": uniform(6, 0.0, 1.0) < (0.5 if config.horizontal_flip else 0.0),
    }


def affine_matrices(params: dict, height, width) -> tf.Tensor:
    """[B, 3, 3] maps from output to input pixel coordinates in (row, col), as ImageDataGenerator builds them."""
    theta = params["theta"] * (math.pi / 180.0)
    shear = params["shear"] * (math.pi / 180.0)
    tx = params["tx"] * tf.cast(height, tf.float32)
    ty = params["ty"] * tf.cast(width, tf.float32)
    zx, zy = params["zx"], params["zy"]
    zeros, ones = tf.zeros_like(theta), tf.ones_like(theta)

    def matrix(rows):
        return tf.stack([tf.stack(row, axis=-1) for row in rows], axis=-2)

    rotation = matrix([[tf.cos(theta), -tf.sin(theta), zeros], [tf.sin(theta), tf.cos(theta), zeros], [zeros, zeros, ones]])
    shift = matrix([[ones, zeros, tx], [zeros, ones, ty], [zeros, zeros, ones]])
    shear_m = matrix([[ones, -tf.sin(shear), zeros], [zeros, tf.cos(shear), zeros], [zeros, zeros, ones]])
    zoom = matrix([[zx, zeros, zeros], [zeros, zy, zeros], [zeros, zeros, ones]])
    transform = rotation @ shift @ shear_m @ zoom
    # About the image centre, as transform_matrix_offset_center does.
    centre_row = tf.cast(height, tf.float32) / 2.0 - 0.5
    centre_col = tf.cast(width, tf.float32) / 2.0 - 0.5
    offset = tf.convert_to_tensor([[1.0, 0.0, centre_row], [0.0, 1.0, centre_col], [0.0, 0.0, 1.0]])
    reset = tf.convert_to_tensor([[1.0, 0.0, -centre_row], [0.0, 1.0, -centre_col], [0.0, 0.0, 1.0]])
    return offset @ transform @ reset


def flip_matrices(flip: tf.Tensor, width) -> tf.Tensor:
    """[B, 3, 3] (row, col) maps: output column c reads column width - 1 - c where flip is true.

    A flip after the warp samples the input at M @ F: folded into the matrix, it costs nothing.
    """
    sign = tf.where(flip, -1.0, 1.0)
    offset = tf.where(flip, tf.cast(width, tf.float32) - 1.0, 0.0)
    zeros, ones = tf.zeros_like(sign), tf.ones_like(sign)
    return tf.stack([tf.stack([ones, zeros, zeros], -1), tf.stack([zeros, sign, offset], -1),
                     tf.stack([zeros, zeros, ones], -1)], axis=-2)


def projective_transforms(matrices: tf.Tensor) -> tf.Tensor:
    """(row, col) output-to-input matrices [B, 3, 3] -> ImageProjectiveTransformV3's [B, 8] (x=col, y=row)."""
    swap = tf.constant([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return tf.reshape(swap @ matrices @ swap, [-1, 9])[:, :8]


def random_transforms(batch_size, seed, height, width, config: AugmentConfig = RECIPE) -> tf.Tensor:
    """[B, 8] transforms for a batch: ImageDataGenerator's warp and flip per image, from a stateless seed [2]."""
    params = sample_params(batch_size, seed, config)
    matrices = affine_matrices(params, height, width) @ flip_matrices(params["flip"], width)
    return projective_transforms(matrices)


def apply_transforms(images: tf.Tensor, transforms: tf.Tensor) -> tf.Tensor:
    """Warp a batch [B, H, W, C] of float images by [B, 8] transforms; bilinear, nearest fill."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST",
    )


def random_transform(images: tf.Tensor, seed, config: AugmentConfig = RECIPE) -> tf.Tensor:
    """Augment a batch [B, H, W, C] of float images in one call, reproducibly for a given seed."""
    shape = tf.shape(images)
    return apply_transforms(images, random_transforms(shape[0], seed, shape[1], shape[2], config))
