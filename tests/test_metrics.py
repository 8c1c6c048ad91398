import numpy as np
import pytest

from tl_core.metrics import classification_metrics, confusion_matrix


def test_confusion_matrix_and_scores_by_hand():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 1, 0, 1, 2, 2]
    assert confusion_matrix(y_true, y_pred, 3).tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    logits = np.eye(3)[y_pred] * 5.0
    metrics = classification_metrics(y_true, logits, ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    by_class = {row["class"]: row for row in metrics["per_class"]}
    assert by_class["a"]["precision"] == 1.0 and by_class["a"]["recall"] == pytest.approx(2 / 3)
    assert by_class["b"]["precision"] == pytest.approx(0.5) and by_class["b"]["recall"] == pytest.approx(0.5)
    assert by_class["c"]["precision"] == pytest.approx(0.5) and by_class["c"]["f1"] == pytest.approx(2 / 3)
    assert [row["support"] for row in metrics["per_class"]] == [3, 2, 1]
    # Cross-entropy of logits 5 on the predicted class: right -> -log(e^5/(e^5+2)), wrong -> -log(1/(e^5+2)).
    right, wrong = -np.log(np.e**5 / (np.e**5 + 2)), -np.log(1 / (np.e**5 + 2))
    assert metrics["loss"] == pytest.approx((4 * right + 2 * wrong) / 6)


def test_a_class_never_predicted_scores_zero_not_nan():
    metrics = classification_metrics([0, 1], np.array([[1.0, 0.0], [1.0, 0.0]]), ["a", "b"])
    assert metrics["per_class"][1] == {"class": "b", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_balanced_accuracy_and_macro_f1_are_scikit_learns():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y_true = rng.choice(4, size=300, p=[0.7, 0.2, 0.08, 0.02])  # imbalanced, as where they matter
    logits = rng.standard_normal((300, 4)) + 2.0 * np.eye(4)[y_true] * rng.random((300, 1))
    metrics = classification_metrics(y_true, logits, ["a", "b", "c", "d"])
    y_pred = logits.argmax(axis=1)
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert metrics["balanced_accuracy"] != pytest.approx(metrics["accuracy"])


def test_the_evaluation_table_leads_with_the_three_scores():
    from tl_core.serving.evaluate import format_report

    metrics = classification_metrics([0, 0, 0, 1], np.eye(2)[[0, 0, 0, 0]], ["a", "b"])
    assert format_report(metrics).splitlines()[0] == ("accuracy 0.7500  balanced accuracy 0.5000  macro-F1 0.4286  "
                                                      f"loss {metrics['loss']:.4f}  images 4")
