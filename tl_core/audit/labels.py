"""Likely label errors: images whose given class the rest of the data disagrees with.

Every image gets out-of-fold class probabilities: the images (both splits together) are cut into stratified folds,
and each fold is predicted by the head the run trains (model/head.HeadOnFeatures: the same head, optimizer, schedule
and loss, each epoch's order drawn from (seed, epoch)), fitted on the other folds' backbone features. Confident learning (cleanlab's
find_label_issues) then names the images whose given class is unlikely under those probabilities, ranked by
cleanlab's label-quality score (low: likely wrong), with the class the heads suggest instead.
"""
import math

import numpy as np
import tensorflow as tf

from tl_core import interrupts
from tl_core.config import HeadRecipe
from tl_core.data.feature_sets import InMemoryFeatures
from tl_core.data.images import tuning_folds
from tl_core.model.head import HeadOnFeatures

LABEL_ISSUE = "label_issue"


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int, head: HeadRecipe,
                              folds: int, epochs: int) -> np.ndarray:
    """[n, classes] softmax of the head fitted (for `epochs` epochs, in one cycle of its schedule) on every fold but
    the row's own. One head is compiled once and restarted for each fold: the same as a new head per fold, without
    tracing its training step again."""
    head = head.over(epochs)
    fold_of_row = tuning_folds(labels, folds, 1 / folds, head.seed)
    largest_fit = max(int((fold_of_row != fold).sum()) for fold in range(folds))
    trainer = HeadOnFeatures(head, features.shape[1], num_classes, steps_per_epoch=math.ceil(largest_fit / head.batch_size))
    probabilities = np.zeros((len(labels), num_classes), np.float32)
    for fold in range(folds):
        interrupts.check()
        held_out = fold_of_row == fold
        trainer.restart()
        trainer.fit(InMemoryFeatures(features[~held_out], labels[~held_out].astype(np.int32)))
        probabilities[held_out] = tf.nn.softmax(trainer.logits(features[held_out])).numpy()
    return probabilities


def label_issues(labels: np.ndarray, probabilities: np.ndarray) -> list[tuple[int, int, float]]:
    """(row, suggested class, label-quality score) of each likely label error, most likely first (cleanlab)."""
    from cleanlab.filter import find_label_issues  # cleanlab (and scikit-learn) only when the label check runs
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probabilities)
    # n_jobs=1: more would fork a multiprocessing pool from a process with TensorFlow's threads running, and a forked
    # child can wait forever on a lock one of them held (seen: a test run hung in find_label_issues). Results are the
    # same for any n_jobs (cleanlab's docs); the label check on 2,000 images takes milliseconds either way.
    rows = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1)
    return [(int(row), int(probabilities[row].argmax()), float(quality[row])) for row in rows]
