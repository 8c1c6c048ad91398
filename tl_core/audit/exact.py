"""Exact duplicates: the same bytes more than once in a dataset (SHA-256 of each image's encoded bytes).

A group of identical images is one finding, of the first kind that applies:
  leakage             in train/ and in validation/: the validation score counts images the model trained on;
  conflicting_labels  in one split, under two or more classes: the model is taught both;
  redundant_copy      in one class of one split: weighs that image twice.
"""
import dataclasses

LEAKAGE, CONFLICTING_LABELS, REDUNDANT_COPY = "leakage", "conflicting_labels", "redundant_copy"


@dataclasses.dataclass(frozen=True)
class Example:
    split: str
    path: str  # the file; for a Parquet row, its source file as jobs.ingest recorded it, with the shard and row
    class_name: str


def hashed_examples(source, split: str, known: dict | None = None) -> list[tuple[str, Example]]:
    """(SHA-256 of its encoded bytes, example) of every image of a source (data/source.ImageSource); known: path ->
    SHA-256 of files hashed already."""
    digests = source.content_digests(f"Hashing {split} images", known)
    return [(digest, Example(split, name, source.class_names[label]))
            for digest, name, label in zip(digests, source.names(), source.labels)]


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
