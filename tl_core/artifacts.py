"""Writing a run's artifacts: every file appears complete under its final name, or not at all."""
import contextlib
import ctypes
import errno
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
from PIL import Image  # noqa: E402


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
    """Yield a temporary directory beside `path`; on success it becomes `path` in one step: a reader finds the old
    directory or the new one, whole, never neither (an existing one is swapped out, then removed).

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
            _swap(tmp, path)  # tmp now holds the old directory, removed below
            return
        try:
            os.replace(tmp, path)
        except OSError:
            if replace or not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap(new: Path, path: Path) -> None:
    """Exchange two directories in one rename (Linux: renameat2 with RENAME_EXCHANGE). Where the system or the file
    system has no such rename, the old one is renamed aside and the new one in: the name is missing for the moment
    between two renames."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        at_current_directory, rename_exchange = -100, 2
        if renameat2(at_current_directory, os.fsencode(new), at_current_directory, os.fsencode(path), rename_exchange) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(path))
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
    os.replace(path, aside / path.name)
    os.replace(new, path)
    os.replace(aside / path.name, new)  # for the caller to remove, as after an exchange
    aside.rmdir()


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
    """Images in a grid, each with its own caption of up to 3 lines (e.g. the most confidently wrong predictions).
    Drawn as one picture: the images resized into one pixel canvas, each cell about as large as the largest image
    (2.6-3 inches at 100 dpi: room for a caption line of 40 characters), the captions as text over it. Most of a sheet's time is
    encoding its pixels."""
    rows = max(1, -(-len(images) // columns))
    largest = max((max(np.shape(image)[:2]) for image in images), default=0)
    dpi, caption_height, title_height = 100, 0.5, 0.5  # inches
    cell = float(np.clip(largest / dpi, 2.6, 3.0))
    width, height = cell * columns, rows * (cell + caption_height) + title_height
    canvas = np.full((round(height * dpi), round(width * dpi), 3), 255, np.uint8)
    figure = plt.figure(figsize=(width, height), dpi=dpi)
    for index, (image, caption) in enumerate(zip(images, titles)):
        row, column = divmod(index, columns)
        top = title_height + row * (cell + caption_height) + caption_height  # inches, of the image's cell
        pixels = fit_into(image, round(0.96 * cell * dpi))
        y, x = round(top * dpi) + (round(cell * dpi) - pixels.shape[0]) // 2, round((column + 0.5) * cell * dpi) - pixels.shape[1] // 2
        canvas[y:y + pixels.shape[0], x:x + pixels.shape[1]] = pixels
        figure.text((column + 0.5) / columns, 1 - (top - 0.04) / height, caption, ha="center", va="bottom", fontsize=8)
    axis = figure.add_axes((0, 0, 1, 1), zorder=-1)
    axis.imshow(canvas, interpolation="nearest", aspect="auto")
    axis.axis("off")
    if not images:
        figure.text(0.5, 1 - (title_height + (cell + caption_height) / 2) / height, empty, ha="center", va="center")
    figure.suptitle(title, y=1 - 0.15 / height, va="top")
    save_figure(figure, path, tight=False)


def fit_into(image, size: int) -> np.ndarray:
    """An image (floats in [0, 1]; grey, RGB or RGBA) as uint8 RGB, resized to fit size x size with its aspect kept:
    enlarged pixel by pixel when at least doubled (tiny images stay sharp), else smoothly."""
    pixels = np.asarray(image, np.float64)
    pixels = np.repeat(pixels[..., None], 3, -1) if pixels.ndim == 2 else pixels
    pixels = np.repeat(pixels, 3, -1) if pixels.shape[-1] == 1 else pixels[..., :3]
    picture = Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8))
    scale = size / max(picture.size)
    resized = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return np.asarray(picture.resize(resized, Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR))


def save_figure(figure, path, tight: bool = True) -> None:
    if tight:
        figure.tight_layout()
    with atomic_path(path) as tmp:
        # zlib level 1: a sheet of photos encodes in half the time of the default 6, for a file a few % larger
        figure.savefig(tmp, format="png", dpi=100, pil_kwargs={"compress_level": 1})
    plt.close(figure)
