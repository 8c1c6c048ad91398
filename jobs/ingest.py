"""Turn class folders into Parquet shards for a cluster: `python -m jobs.ingest --help`.

  python -m jobs.ingest --data-dir data/ --output /mnt/shared/data-parquet/

reads data/train/<class>/* and data/validation/<class>/* and writes
<output>/train/part-NNNNN.parquet and <output>/validation/part-NNNNN.parquet (columns: image bytes as
encoded in the source file, label, class_name, path). `python -m jobs.train --data-dir <output>`
then trains on them, locally or on Ray, reading a few large files instead of many small ones.

  python -m jobs.ingest --data-dir data/ --output /mnt/shared/data-224/ --image-size 224

decodes every image once and stores it already resized to 224x224 (raw RGB pixels, lossless): the
training hosts then only read pixels, with no decode and no resize per image and epoch.

  python -m jobs.ingest --ray --data-dir /mnt/shared/data/ --output /mnt/shared/data-parquet/

does the same across a Ray cluster's CPUs (Ray Data tasks check chunks of files and write the shards in
parallel; the files are those the local ingest writes). Under `ray job submit` it uses that cluster;
otherwise it starts Ray on this machine. On a cluster, --data-dir and --output must be shared storage.
"""
import argparse
import sys
from pathlib import Path

import tl_core  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from jobs.cli import CHECK_FOUND_BAD_FILES, add_quiet_argument, run_command
from tl_core.config import TrainConfig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="directory with train/ and validation/ class folders, or class folders "
                        "to split (default: the built-in cats-vs-dogs sample)")
    parser.add_argument("--output", help="directory for the Parquet dataset (new, or empty)")
    parser.add_argument("--check", action="store_true",
                        help="only check the data: list every file that cannot be used, write nothing")
    parser.add_argument("--skip-bad-files", action="store_true",
                        help="leave files that cannot be used out of the Parquet dataset (default: stop and list them)")
    parser.add_argument("--validation-split", type=float, default=TrainConfig.validation_split,
                        help="fraction of each class held out when --data-dir has no train/ and validation/ "
                        f"(default {TrainConfig.validation_split})")
    parser.add_argument("--image-size", type=int,
                        help="store each image decoded and resized to NxN (raw RGB pixels, lossless): training at "
                        "--image-size N then skips decoding and resizing (default: keep the files' encoded bytes)")
    parser.add_argument("--min-image-side", type=int, default=TrainConfig.min_image_side,
                        help=f"smaller images are bad files (default {TrainConfig.min_image_side} pixels)")
    parser.add_argument("--max-image-megapixels", type=float, default=TrainConfig.max_image_megapixels,
                        help="larger images are bad files, refused from their header before decoding "
                        f"(default {TrainConfig.max_image_megapixels:g}); the limits are recorded in the shards, and "
                        "training with limits no stricter does not decode the rows again")
    parser.add_argument("--rows-per-file", type=int, default=5000, help="images per Parquet file (default 5000)")
    parser.add_argument("--ray", action="store_true",
                        help="check and write on a Ray cluster's CPUs (the cluster of `ray job submit` or $RAY_ADDRESS, "
                        "else Ray on this machine); default: in this process")
    parser.add_argument("--cache-dir", help="asset cache: the built-in sample, and the verdicts of earlier checks")
    add_quiet_argument(parser)
    args = parser.parse_args(argv)
    if not args.check and not args.output:
        parser.error("--output is required (or pass --check)")

    def body() -> int:
        from tl_core.data.checks import format_bad_files
        from tl_core.data.ingest import check_arguments, ingest
        from tl_core.data.sources import check_dataset, describe_check
        from tl_core.model.assets import cache_dir

        if not args.check:
            check_arguments(Path(args.output), image_size=args.image_size, rows_per_file=args.rows_per_file)
        # batch_size=1: a dataset of any size can be ingested; jobs.train checks its own batch size.
        config = TrainConfig(data_dir=args.data_dir, cache_dir=args.cache_dir, batch_size=1,
                             validation_split=args.validation_split, min_image_side=args.min_image_side,
                             max_image_megapixels=args.max_image_megapixels)
        if args.ray:
            from tl_core.data.ingest_ray import find_bad_files_on_ray as find_bad, write_parquet_shards_on_ray as write
        else:
            from tl_core.data.checks import find_bad_files as find_bad
            from tl_core.data.parquet import write_parquet_shards as write
        check = check_dataset(config, cache_dir(config.cache_dir), find_bad)
        print(describe_check(check), flush=True)
        if args.check:
            if check.bad_files:
                print(f"{len(check.bad_files)} file(s) cannot be used for training:\n"
                      f"{format_bad_files(check.bad_files, limit=len(check.bad_files))}")
                return CHECK_FOUND_BAD_FILES
            print("Check passed: every file is a usable image.")
            return 0
        ingest(check, Path(args.output), skip_bad_files=args.skip_bad_files, image_size=args.image_size,
               rows_per_file=args.rows_per_file, write=write)
        size_flag = f" --image-size {args.image_size}" if args.image_size else ""
        print(f"Parquet dataset written to {args.output}; train with: python -m jobs.train --data-dir {args.output}"
              f"{size_flag}")
        return 0

    return run_command(body, quiet=args.quiet, ray_work="the ingest on Ray")


if __name__ == "__main__":
    sys.exit(main())
