"""Exact duplicates: the same bytes more than once in a dataset (SHA-256 of each image's encoded bytes).

A group of identical images is one finding, of the first kind that applies:
  leakage             in train/ and in validation/: the validation score counts images the model trained on;
  conflicting_labels  in one split, under two or more classes: the model is taught both;
  redundant_copy      in one class of one split: weighs that image twice.
"""
import concurrent.futures
import dataclasses
import hashlib

import pyarrow.parquet as pq

from tl_core import storage
from tl_core.progress import track

LEAKAGE, CONFLICTING_LABELS, REDUNDANT_COPY = "leakage", "conflicting_labels", "redundant_copy"


@dataclasses.dataclass(frozen=True)
class Example:
    split: str
    path: str  # the file; for a Parquet row, its source file as jobs.ingest recorded it, with the shard and row
    class_name: str


def hashed_examples(source, split: str, known: dict | None = None) -> list[tuple[str, Example]]:
    """(SHA-256 of its encoded bytes, example) of every image of a source: class folders (files read in threads: on
    object storage each is a request away; a file in `known`, path -> SHA-256, is not read) or Parquet shards (the image
    column, row group by row group)."""
    description = f"Hashing {split} images"
    if hasattr(source, "paths"):
        known = known or {}
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            digests = list(track(pool.map(lambda path: known.get(path) or storage.sha256(path), source.paths), len(source),
                                 description, unit="files"))
        return [(digest, Example(split, path, source.class_names[label]))
                for digest, path, label in zip(digests, source.paths, source.labels)]
    hashed = []
    for file, group, begin, end in track(source.segments, len(source.segments), description, unit="row groups"):
        table = pq.ParquetFile(storage.parquet_source(source.files[file])).read_row_group(
            group, columns=["image", "label", "path"]).slice(begin, end - begin)
        for row, (image, label, path) in enumerate(zip(*(table.column(name).to_pylist() for name in ("image", "label", "path")))):
            where = row_name(path, source.files[file], group, begin + row)
            hashed.append((hashlib.sha256(image).hexdigest(), Example(split, where, source.class_names[label])))
    return hashed


def row_name(path: str, file: str, group: int, row: int) -> str:
    """A Parquet row by the source file jobs.ingest recorded, with the shard and row that hold it."""
    return f"{path} ({storage.display(file)}, row group {group}, row {row})"


def example_names(source) -> list[str]:
    """Each image of a source by its path: the file, or for a Parquet row its row_name (the path column read alone)."""
    if hasattr(source, "paths"):
        return list(source.paths)
    names = []
    for file, group, begin, end in source.segments:
        paths = pq.ParquetFile(storage.parquet_source(source.files[file])).read_row_group(
            group, columns=["path"]).slice(begin, end - begin).column("path").to_pylist()
        names += [row_name(path, source.files[file], group, begin + row) for row, path in enumerate(paths)]
    return names


def exact_duplicates(hashed: list[tuple[str, Example]]) -> list[dict]:
    """One finding per group of identical images: kind, sha256, and the group's paths, splits and classes (sorted:
    train before validation)."""
    groups = {}
    for digest, example in hashed:
        groups.setdefault(digest, []).append(example)
    findings = []
    for digest, examples in groups.items():
        if len(examples) < 2:
            continue
        examples = sorted(examples, key=lambda example: (example.split != "train", example.split, example.path))
        splits = {example.split for example in examples}
        classes_per_split = {split: {example.class_name for example in examples if example.split == split} for split in splits}
        kind = (LEAKAGE if len(splits) > 1 else
                CONFLICTING_LABELS if any(len(classes) > 1 for classes in classes_per_split.values()) else REDUNDANT_COPY)
        findings.append({"kind": kind, "sha256": digest, "paths": [example.path for example in examples],
                         "splits": [example.split for example in examples],
                         "classes": [example.class_name for example in examples]})
    order = {LEAKAGE: 0, CONFLICTING_LABELS: 1, REDUNDANT_COPY: 2}
    return sorted(findings, key=lambda finding: (order[finding["kind"]], finding["paths"][0]))
