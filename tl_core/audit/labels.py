"""Likely label errors: images whose given class the rest of the data disagrees with.

Every image gets out-of-fold class probabilities: the images (both splits together) are cut into stratified folds,
and each fold is predicted by the head the run trains (classifier.make_head, compiled by model/head.compile_head: the
same optimizer, schedule and loss), fitted on the other folds' backbone features. Confident learning (cleanlab's
find_label_issues) then names the images whose given class is unlikely under those probabilities, ranked by
cleanlab's label-quality score (low: likely wrong), with the class the heads suggest instead.
"""
import dataclasses
import math

import numpy as np
import tensorflow as tf

from tl_core import interrupts
from tl_core.config import TrainConfig
from tl_core.data.images import tuning_folds
from tl_core.model.classifier import make_head
from tl_core.model.head import compile_head

LABEL_ISSUE = "label_issue"


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int, head: TrainConfig,
                              folds: int, epochs: int) -> np.ndarray:
    """[n, classes] softmax of the head fitted (for `epochs` epochs, head's recipe and seed) on every fold but the
    row's own. One model is compiled once and reset to its initial weights and a fresh optimizer state for each fold:
    the same as a new head per fold, without tracing its training step again."""
    head = dataclasses.replace(head, epochs=epochs, head_cycle_ends=None)  # its learning-rate schedule over these epochs
    fold_of_row = tuning_folds(labels, folds, 1 / folds, head.seed)
    tf.keras.utils.set_random_seed(head.seed)
    model = tf.keras.Sequential([tf.keras.Input((features.shape[1],)),
                                 make_head(num_classes, head.head_hidden, head.head_dropout, head.seed, head.head_l2)])
    largest_fit = max(int((fold_of_row != fold).sum()) for fold in range(folds))
    optimizer = compile_head(model, head, steps_per_epoch=math.ceil(largest_fit / head.batch_size), whole_epochs=True)
    initial = model.get_weights()
    probabilities = np.zeros((len(labels), num_classes), np.float32)
    for fold in range(folds):
        interrupts.check()
        held_out = fold_of_row == fold
        model.set_weights(initial)
        for variable in optimizer.variables:  # the step count (the schedule's position) and Adam's moments
            variable.assign(tf.zeros_like(variable))
        model.fit(features[~held_out], labels[~held_out], batch_size=head.batch_size, epochs=head.epochs, shuffle=True,
                  verbose=0)
        probabilities[held_out] = tf.nn.softmax(model(features[held_out], training=False)).numpy()
    return probabilities


def label_issues(labels: np.ndarray, probabilities: np.ndarray) -> list[tuple[int, int, float]]:
    """(row, suggested class, label-quality score) of each likely label error, most likely first (cleanlab)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probabilities)
    # n_jobs=1: more would fork a multiprocessing pool from a process with TensorFlow's threads running, and a forked
    # child can wait forever on a lock one of them held (seen: a test run hung in find_label_issues). Results are the
    # same for any n_jobs (cleanlab's docs); the label check on 2,000 images takes milliseconds either way.
    rows = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1)
    return [(int(row), int(probabilities[row].argmax()), float(quality[row])) for row in rows]
