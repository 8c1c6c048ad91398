"""Keras ImageDataGenerator's random affine augmentation, as batched TensorFlow ops.

Semantics follow ImageDataGenerator.random_transform / apply_affine_transform exactly:
rotation in degrees, shifts as fractions of height/width, shear in *degrees* (so the recipe's
shear_range=0.2 is a 0.2 degree shear, ImageDataGenerator's documented quirk), independent zoom
factors per axis in [1 - zoom, 1 + zoom], bilinear sampling with `nearest` fill, then a horizontal
flip with probability 0.5. One projective-transform op handles the whole batch.
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


def apply_affine(images: tf.Tensor, matrices: tf.Tensor) -> tf.Tensor:
    """Warp a batch [B, H, W, C] with (row, col) output-to-input matrices; bilinear, nearest fill."""
    # ImageProjectiveTransformV3 takes (x=col, y=row) order: swap rows and columns of each matrix.
    swap = tf.constant([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    xy = swap @ matrices @ swap
    transforms = tf.reshape(xy, [-1, 9])[:, :8]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST",
    )


def random_transform(images: tf.Tensor, seed, config: AugmentConfig = RECIPE) -> tf.Tensor:
    """Augment a batch [B, H, W, C] of float images, reproducibly for a given seed."""
    shape = tf.shape(images)
    params = sample_params(shape[0], seed, config)
    images = apply_affine(images, affine_matrices(params, shape[1], shape[2]))
    return tf.where(params["flip"][:, None, None, None], tf.reverse(images, axis=[2]), images)
