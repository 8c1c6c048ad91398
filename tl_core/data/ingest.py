"""Class folders -> Parquet shards for a cluster: checked first, bad files stopping the ingest or left out.

Shards hold the files' encoded bytes, or, with an image size, the images decoded and resized once
(raw pixels: training then neither decodes nor resizes). See data/parquet.py for the layout.
"""
import os

from tl_core import storage
from tl_core.data.checks import format_bad_files
from tl_core.data.images import DatasetError, ImageFolder
from tl_core.data.parquet import write_parquet_shards
from tl_core.data.sources import DatasetCheck, enforce_policy
from tl_core.run_dir import claim_output


def check_arguments(output, *, image_size: int | None, rows_per_file: int) -> None:
    """Refuse what would fail later, before the (long) check of every image. output: a path or a URI."""
    claim_output(output, flag="--output")
    if rows_per_file <= 0:
        raise DatasetError(f"--rows-per-file must be positive, got {rows_per_file}")
    if image_size is not None and image_size <= 0:
        raise DatasetError(f"--image-size must be positive, got {image_size}")


def ingest(check: DatasetCheck, output, *, skip_bad_files: bool, image_size: int | None = None,
           rows_per_file: int = 5000, write=write_parquet_shards, log=print) -> None:
    """Write a checked dataset's train/ and validation/ as Parquet shards under output (a path or a URI), with `write`
    (parquet.write_parquet_shards here, or ingest_ray.write_parquet_shards_on_ray across a cluster)."""
    check_arguments(output, image_size=image_size, rows_per_file=rows_per_file)
    skipped = {item.path for item in enforce_policy(check, "skip" if skip_bad_files else "fail")}
    if skipped:
        log(f"Leaving out {len(skipped)} bad file(s):\n{format_bad_files(check.bad_files)}")
    for split, source in (("train", check.train), ("validation", check.validation)):
        if not isinstance(source, ImageFolder):
            raise DatasetError(f"{storage.display(storage.join(check.data_dir, split))} is already Parquet")
        kept = source.without(skipped)
        log(f"{split}: writing {len(kept)} images{f' resized to {image_size}x{image_size}' if image_size else ''}",
            flush=True)
        split_dir = storage.join(output, split)
        written = write(kept, split_dir, rows_per_file=rows_per_file, image_size=image_size, checked=check.limits)
        log(f"  {len(written)} file(s) in {storage.display(split_dir)}: {size_report(kept, written)}", flush=True)


def size_report(folder: ImageFolder, written: list) -> str:
    """Bytes per image on disk: the Parquet shards against the source files (their sizes as listed)."""
    source_bytes = int(folder.stats[:, 0].sum()) if folder.stats is not None else sum(map(os.path.getsize, folder.paths))
    parquet_bytes = sum(map(storage.size, written))
    count = max(len(folder), 1)
    return (f"{parquet_bytes / count / 1024:.1f} KiB per image in Parquet, {source_bytes / count / 1024:.1f} KiB "
            f"per source file ({parquet_bytes / max(source_bytes, 1):.2f}x)")
