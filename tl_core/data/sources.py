"""The dataset a configuration names: its train and validation sources, checked, with the skip policy.

data_dir holds train/ and validation/ (class folders or Parquet shards), or just class folders,
which are then split per class. The check lists every bad file at once; the run then fails (the
default) or skips them.
"""
import dataclasses
from pathlib import Path

from tl_core import storage
from tl_core.config import DataSettings
from tl_core.data.checks import BadFile, checked_at_ingest, find_bad_files, find_bad_rows, format_bad_files
from tl_core.data.verdicts import Verdicts
from tl_core.run_dir import SKIPPED_FILES
from tl_core.data.images import DatasetError, ImageFolder, check_stored_size, display_path, list_image_folder
from tl_core.data.parquet import is_parquet_split, list_parquet_split
from tl_core.data.source import ImageSource


@dataclasses.dataclass
class Sources:
    """The train and validation sources a run uses, checked once, the files it skips left out."""

    train: ImageSource
    validation: ImageSource
    data_dir: str  # a path or URI
    skipped: int = 0  # bad files left out

    def absolute(self) -> "Sources":
        """The same sources with absolute paths, for Ray workers (they do not share this working directory)."""
        return dataclasses.replace(self, train=self.train.absolute(), validation=self.validation.absolute(),
                                   data_dir=storage.absolute(self.data_dir))


@dataclasses.dataclass
class DatasetCheck:
    train: ImageSource
    validation: ImageSource
    data_dir: str  # a path or URI
    bad_files: list[BadFile]
    decoded: int = 0  # files and rows this check decoded
    remembered: int = 0  # files not decoded again: unchanged since a check with the same limits (data.verdicts)
    trusted: int = 0  # Parquet rows not decoded: checked by jobs.ingest
    limits: dict | None = None  # what the check refused: {"min_side": .., "max_pixels": ..}

    @property
    def ignored(self) -> list[str]:
        return [path for source in (self.train, self.validation) for path in source.ignored]

    def sources(self, skipped: list[BadFile]) -> Sources:
        """What a run trains on: the checked sources without the bad files it skips."""
        paths = {item.path for item in skipped}
        if not paths:
            return Sources(self.train, self.validation, self.data_dir)
        return Sources(self.train.without(paths), self.validation.without(paths), self.data_dir, len(paths))


def list_split(directory: str | Path, class_names: list[str] | None = None):
    """A split directory (a path or URI) as class folders (ImageFolder) or Parquet shards (ParquetImages)."""
    if is_parquet_split(str(directory)):
        return list_parquet_split(str(directory), class_names)
    return list_image_folder(directory, class_names)


def data_directory(data_dir: str | None, cache: Path) -> str:
    """The data directory (a path or URI) asked for, or the built-in cats-vs-dogs sample (prepared in the cache once)."""
    if data_dir:
        return str(data_dir)
    from tl_core.data.sample import prepare_cats_vs_dogs  # loads TensorFlow: a --data-dir never needs it

    return str(prepare_cats_vs_dogs(cache))


def load_splits(data: DataSettings, cache: Path, skip=(), batch_size: int | None = None, workers: int = 1):
    """(train source, validation source, data directory) of the data settings; structural errors raise DatasetError.

    data_dir holds train/ and validation/ (class folders or Parquet shards), or just class folders,
    which are then split with data.validation_split and data.seed. Files in `skip` are left out. batch_size: checked
    against the training images of each of `workers` workers (None: not checked).
    """
    data_dir = data_directory(data.data_dir, cache)
    shown = display_path(data_dir)
    if not storage.is_dir(data_dir):
        raise DatasetError(f"{shown} is not a directory: expected train/ and validation/ folders, "
                           "or one sub-folder of images per class")
    if storage.is_dir(storage.join(data_dir, "train")) or storage.is_dir(storage.join(data_dir, "validation")):
        train = list_split(storage.join(data_dir, "train"))
        validation = list_split(storage.join(data_dir, "validation"), train.class_names)
    elif is_parquet_split(data_dir):
        raise DatasetError(f"{shown} holds Parquet files directly: expected {shown}/train/ and {shown}/validation/")
    else:
        folder = list_image_folder(data_dir)
        train, validation = folder.split(data.validation_split, data.seed)
        train.problems, train.ignored = folder.problems, folder.ignored
    if len(train.class_names) < 2:
        raise DatasetError(
            f"{shown} has only one class, {train.class_names}: a classifier needs at least two class "
            "folders (if your classes are one level deeper, point --data-dir there)")
    if skip:
        train, validation = train.without(skip), validation.without(skip)
    for source in (train, validation):
        check_stored_size(source, data.image_size)
    if batch_size is not None:
        check_batch_size(batch_size, workers, len(train))
    return train, validation, data_dir


def check_batch_size(batch_size: int, workers: int, train_images: int) -> None:
    per_worker = train_images // workers
    if batch_size > per_worker:
        raise DatasetError(
            f"batch size {batch_size} is larger than the {per_worker} training images"
            f"{' per worker' if workers > 1 else ''}: use --batch-size {max(per_worker, 1)} or less")


def check_dataset(data: DataSettings, cache: Path, find_bad=None, batch_size: int | None = None,
                  workers: int = 1) -> DatasetCheck:
    """The dataset and every bad file or row in it (nothing is skipped here); the batch size checked as load_splits
    does, against the training images left once the bad files are skipped.

    Image folders: only files new or changed since the last check with the same limits are decoded (their
    verdicts are remembered in the cache), by find_bad (default checks.find_bad_files; ingest_ray.find_bad_files_on_ray
    on a cluster). Parquet: rows that jobs.ingest checked are trusted, unless data.recheck."""
    find_bad = find_bad or find_bad_files
    train, validation, data_dir = load_splits(data, cache)
    limits = data.limits
    verdicts = Verdicts.load(cache, data_dir, limits)
    bad, decoded, trusted = [], 0, 0
    for split, source in (("train", train), ("validation", validation)):
        description = f"Checking {split}"
        if isinstance(source, ImageFolder):
            bad += verdicts.check(source, lambda folder: find_bad(folder, **limits, description=description))
        elif checked_at_ingest(source, **limits) and not data.recheck:
            trusted += len(source)
        else:
            bad += find_bad_rows(source, **limits, description=description)
            decoded += len(source)
    verdicts.save()
    if batch_size is not None and (not bad or data.bad_files == "skip"):  # with bad files to fix, those come first
        skipped = {item.path for item in bad}
        check_batch_size(batch_size, workers, len(train) - (len(skipped & set(train.names())) if skipped else 0))
    return DatasetCheck(train, validation, data_dir, bad, decoded + verdicts.decoded, verdicts.remembered, trusted,
                        limits)


def describe_check(check: DatasetCheck) -> str:
    """A summary of a checked dataset: image counts per class, ignored and bad files."""
    def counts(source):
        return ", ".join(f"{name} {int((source.labels == label).sum())}" for label, name in enumerate(source.class_names))

    lines = [f"Data {display_path(check.data_dir)}: {len(check.train)} training images ({counts(check.train)}), "
             f"{len(check.validation)} validation images ({counts(check.validation)})"]
    if check.ignored:
        lines.append(f"  ignored {len(check.ignored)} operating-system file(s) and hidden folder(s), "
                     f"e.g. {display_path(check.ignored[0])}")
    checked = [f"{check.decoded} decoded"]
    if check.remembered:
        checked.append(f"{check.remembered} unchanged since their last check, not decoded again")
    if check.trusted:
        checked.append(f"{check.trusted} Parquet rows checked by jobs.ingest, not decoded again (--recheck decodes them)")
    lines.append(f"  checked: {'; '.join(checked)}")
    lines.append(f"  {len(check.bad_files)} bad file(s)" if check.bad_files else "  every file decodes")
    return "\n".join(lines)


class BadFilesError(DatasetError):
    """The check found files that cannot be used, and the run does not skip them."""


def enforce_policy(check: DatasetCheck, policy: str) -> list[BadFile]:
    """Raise listing every bad file (policy "fail"), or return the files to skip (policy "skip")."""
    if not check.bad_files:
        return []
    if policy == "skip":
        rows = [item for item in check.bad_files if item.row is not None]
        if rows:
            raise DatasetError(f"{len(rows)} Parquet row(s) cannot be used, and rows cannot be skipped:\n"
                               f"{format_bad_files(rows)}\nre-run `python -m jobs.ingest --skip-bad-files` "
                               "on the image folders")
        return check.bad_files
    raise BadFilesError(f"{len(check.bad_files)} file(s) cannot be used for training:\n"
                       f"{format_bad_files(check.bad_files)}\n"
                       "fix or remove them, or pass --skip-bad-files to train without them "
                       f"(they are then listed in the run directory's {SKIPPED_FILES})")


def labelled_split(directory, split: str = "validation"):
    """directory/<split> when it exists (a dataset with train/ and validation/), else directory itself."""
    named = storage.join(directory, split)
    return list_split(named if storage.is_dir(named) else str(directory))


