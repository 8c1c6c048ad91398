"""Transfer learning core: model, input pipeline, training loop and metrics.

TF Hub's KerasLayer only works with tf-keras (Keras 2). TensorFlow binds `tf.keras` when it is
first imported, so the switch must be set before any module of this package imports it.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
