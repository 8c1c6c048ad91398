"""Classification metrics from labels and predictions, in plain numpy."""
import numpy as np


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """counts[i, j] = number of examples of true class i predicted as class j."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return counts


def per_class_scores(counts: np.ndarray, class_names: list[str]) -> list[dict]:
    """Precision, recall, F1 and support of each class; 0.0 where a ratio is undefined."""
    true_positives = np.diag(counts).astype(float)
    predicted = counts.sum(axis=0)
    actual = counts.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positives / predicted, 0.0)
        recall = np.where(actual > 0, true_positives / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return [
        {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, actual)
    ]


SCORES = ("accuracy", "balanced_accuracy", "macro_f1")  # what classification_metrics gives that models are ranked by


def class_averages(per_class: list[dict]) -> dict:
    """Balanced accuracy (the mean of the classes' recall) and macro-F1 (the mean of their F1), over the classes that
    have examples: what accuracy hides when one class is most of the data."""
    present = [row for row in per_class if row["support"] > 0]
    return {"balanced_accuracy": float(np.mean([row["recall"] for row in present])) if present else 0.0,
            "macro_f1": float(np.mean([row["f1"] for row in present])) if present else 0.0}


def classification_metrics(y_true, logits: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, mean cross-entropy, per-class scores and the confusion matrix of logits."""
    y_true = np.asarray(y_true)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    y_pred = logits.argmax(axis=1)
    counts = confusion_matrix(y_true, y_pred, len(class_names))
    per_class = per_class_scores(counts, class_names)
    return {
        "accuracy": float((y_pred == y_true).mean()),
        **class_averages(per_class),
        "loss": float(-log_probs[np.arange(len(y_true)), y_true].mean()),
        "num_examples": int(len(y_true)),
        "class_names": list(class_names),
        "per_class": per_class,
        "confusion_matrix": counts.tolist(),
    }
