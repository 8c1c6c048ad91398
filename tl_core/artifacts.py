"""Writing a run's artifacts: every file appears complete under its final name, or not at all."""
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success rename it into place (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from the rest of a team
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_directory(path: str | Path, *, replace: bool = True):
    """Yield a temporary directory beside `path`; on success it becomes `path` in one rename.

    replace=False is for caches that several processes may fill at once: whoever renames first
    wins and the others' identical copies are discarded.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if replace and path.exists():
            shutil.rmtree(path)
        try:
            os.replace(tmp, path)
        except OSError:
            if replace or not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path, value) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n")


def write_parquet(path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)


def plot_history(history: list[dict], path) -> None:
    """Training and validation accuracy and loss per epoch, two panels as in the recipe."""
    epochs = [row["epoch"] for row in history]
    figure, (acc_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for axis, metric, title in ((acc_axis, "accuracy", "Accuracy"), (loss_axis, "loss", "Loss")):
        axis.plot(epochs, [row[metric] for row in history], "o-", label=f"Training {metric}")
        axis.plot(epochs, [row[f"val_{metric}"] for row in history], "o-", label=f"Validation {metric}")
        axis.set_title(f"Training and validation {metric}")
        axis.set_xlabel("epoch")
        axis.set_ylabel(title)
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
        fine_tuned = [row["epoch"] for row in history if row.get("phase") == "fine_tune"]
        if fine_tuned:
            axis.axvline(fine_tuned[0] - 0.5, color="gray", linestyle="--", label="Start fine-tuning")
        axis.legend()
    save_figure(figure, path)


def plot_confusion_matrix(counts, class_names: list[str], path, title: str = "Validation confusion matrix") -> None:
    counts = np.asarray(counts)
    size = max(4.0, 0.6 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axis)
    ticks = range(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(f"{title} (accuracy {np.trace(counts) / max(counts.sum(), 1):.3f})")
    threshold = counts.max() / 2 if counts.size else 0
    for (row, col), value in np.ndenumerate(counts):
        axis.text(col, row, str(value), ha="center", va="center",
                  color="white" if value > threshold else "black")
    save_figure(figure, path)


def plot_contact_sheet(images: list, titles: list[str], path, title: str, columns: int = 4, empty: str = "no mistakes") -> None:
    """Images in a grid, each with its own title of up to 3 lines (e.g. the most confidently wrong predictions).
    The layout is fixed (inches per cell and for the titles): measuring every text for tight_layout took most of the
    time of drawing a sheet."""
    rows = max(1, -(-len(images) // columns))
    cell, caption_height, title_height = 3.0, 0.5, 0.5  # inches
    height = rows * (cell + caption_height) + title_height
    figure, axes = plt.subplots(rows, columns, figsize=(cell * columns, height), squeeze=False)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - (title_height + caption_height) / height,
                           wspace=0.05, hspace=caption_height / cell)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, caption in zip(axes.flat, images, titles):
        axis.imshow(np.clip(image, 0, 1))
        axis.set_title(caption, fontsize=8)
    if not images:
        axes.flat[0].text(0.5, 0.5, empty, ha="center", va="center")
    figure.suptitle(title, y=1 - 0.15 / height, va="top")
    save_figure(figure, path, tight=False)


def save_figure(figure, path, tight: bool = True) -> None:
    if tight:
        figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
