"""Contact sheets of the audit's findings, for a person to check at a glance: each image captioned with what the
audit says of it and its path (under the data directory)."""
from pathlib import Path

import numpy as np

from tl_core import artifacts, storage

THUMBNAIL = 128  # pixels: what the sheets draw


def pictures(source, rows: list[int]) -> list[np.ndarray]:
    """The images at these rows of a source, decoded and resized to THUMBNAIL pixels, as floats in [0, 1]."""
    from tl_core.data.images import host_images  # TensorFlow when a sheet is drawn: `jobs.audit --help` loads none

    if not rows:
        return []
    size = source.image_size or THUMBNAIL  # Parquet rows stored as pixels are drawn at their size
    return [image.numpy() / 255.0 for image, _ in host_images(source.select(rows), size)]


def draw_exact_groups(groups: list[dict], path: Path, data_dir: str) -> None:
    """The first two copies of each group side by side, captioned with kind, split, class and path."""
    import tensorflow as tf  # as in pictures()

    from tl_core.data.images import decode_and_resize

    images, captions = [], []
    for group in groups:
        for index in (0, 1):
            where = group["paths"][index]
            encoded = storage.read_bytes(where) if storage.exists(where) else None
            image = (decode_and_resize(tf.constant(encoded), THUMBNAIL).numpy() / 255.0 if encoded is not None
                     else np.ones((THUMBNAIL, THUMBNAIL, 3)))  # a Parquet row: its path names the source file, not this data
            images.append(image)
            captions.append(f"{group['kind']}: {group['splits'][index]}/{group['classes'][index]}\n"
                            f"{wrap(shown(where, data_dir))}")
    artifacts.plot_contact_sheet(images, captions, path, columns=4, empty="no exact duplicates",
                                 title=f"Exact duplicates: {len(groups)} group(s), first two copies of each side by side")


def draw_near_pairs(pairs: list[dict], sources: dict, path: Path, data_dir: str, threshold: float) -> None:
    """Each near-duplicate pair side by side, captioned with kind, similarity, split, class and path."""
    drawn = {split: pictures(source, [row for pair in pairs for split_of, row in pair["rows"] if split_of == split])
             for split, source in sources.items()}
    taken = {split: iter(images) for split, images in drawn.items()}
    images, captions = [], []
    for pair in pairs:
        for (split, row), class_name, where in zip(pair["rows"], pair["classes"], pair["paths"]):
            images.append(next(taken[split]))
            captions.append(f"{pair['kind']} {pair['score']:.3f}: {split}/{class_name}\n{wrap(shown(where, data_dir))}")
    artifacts.plot_contact_sheet(images, captions, path, columns=4, empty="no near duplicates",
                                 title=f"Near duplicates (cosine similarity of centred backbone features >= {threshold:g}): "
                                       f"the {len(pairs)} most similar pair(s), side by side")


def draw_label_issues(issues: list[dict], sources: dict, path: Path, data_dir: str) -> None:
    """The likeliest label errors, captioned with the given and the suggested class, the score and the path."""
    drawn = {split: pictures(source, [issue["rows"][0][1] for issue in issues if issue["rows"][0][0] == split])
             for split, source in sources.items()}
    taken = {split: iter(images) for split, images in drawn.items()}
    images, captions = [], []
    for issue in issues:
        split = issue["rows"][0][0]
        images.append(next(taken[split]))
        captions.append(f"{split}: given {issue['classes'][0]}, suggested {issue['suggested_class']}\n"
                        f"label quality {issue['score']:.3g}\n{wrap(shown(issue['paths'][0], data_dir))}")
    artifacts.plot_contact_sheet(images, captions, path, columns=4, empty="no likely label errors",
                                 title=f"Likely label errors: the {len(issues)} with the lowest label quality (cleanlab)")


def shown(path: str, data_dir: str) -> str:
    """A file under the data directory by its path there; anything else as it is."""
    inside = str(path).startswith(str(data_dir).rstrip("/") + "/")
    return storage.relative(path, data_dir) if inside else storage.display(path)


def wrap(text: str, width: int = 40) -> str:
    return "\n".join(text[start:start + width] for start in range(0, len(text), width))
