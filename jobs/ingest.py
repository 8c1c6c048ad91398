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
otherwise it starts Ray on this machine. On a cluster, --data-dir and --output are shared storage or s3:// URIs.
"""
import argparse

import tl_core  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from jobs.cli import CHECK_FOUND_BAD_FILES, add_field_arguments, add_quiet_argument, exit_after, given_fields, run_command
from tl_core.config import TrainConfig

INGEST_FIELDS = ("data_dir", "validation_split", "seed", "bad_files", "min_image_side", "max_image_megapixels", "cache_dir")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # The settings a training run shares, declared once (tl_core/config.py): the data and how it is checked.
    add_field_arguments(parser, TrainConfig, only=INGEST_FIELDS)
    parser.add_argument("--output", help="directory for the Parquet dataset, a path or an s3:// URI (new, or empty)")
    parser.add_argument("--check", action="store_true",
                        help="only check the data: list every file that cannot be used, write nothing")
    parser.add_argument("--image-size", type=int,
                        help="store each image decoded and resized to NxN (raw RGB pixels, lossless): training at "
                        "--image-size N then skips decoding and resizing (default: keep the files' encoded bytes)")
    parser.add_argument("--rows-per-file", type=int, default=5000, help="images per Parquet file (default 5000)")
    parser.add_argument("--ray", action="store_true",
                        help="check and write on a Ray cluster's CPUs (the cluster of `ray job submit` or $RAY_ADDRESS, "
                        "else Ray on this machine); default: in this process")
    add_quiet_argument(parser)
    args = parser.parse_args(argv)
    if not args.check and not args.output:
        parser.error("--output is required (or pass --check)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def body() -> int:
        from tl_core.data.checks import format_bad_files
        from tl_core.data.ingest import check_arguments, ingest
        from tl_core.data.sources import check_dataset, describe_check
        from tl_core.model.assets import cache_dir

        if not args.check:
            check_arguments(args.output, image_size=args.image_size, rows_per_file=args.rows_per_file)
        # The check's limits are recorded in the shards: training with limits no stricter does not decode the rows again.
        config = TrainConfig(**given_fields(args, TrainConfig))
        if args.ray:
            from tl_core import ray_session
            from tl_core.data.ingest_ray import find_bad_files_on_ray as find_bad, write_parquet_shards_on_ray as write

            ray_session.check()  # before the check's work: ray.init() would wait without end where no Ray answers
        else:
            from tl_core.data.checks import find_bad_files as find_bad
            from tl_core.data.parquet import write_parquet_shards as write
        check = check_dataset(config.data, cache_dir(config.cache_dir), find_bad)
        print(describe_check(check), flush=True)
        if args.check:
            if check.bad_files:
                print(f"{len(check.bad_files)} file(s) cannot be used for training:\n"
                      f"{format_bad_files(check.bad_files, limit=len(check.bad_files))}")
                return CHECK_FOUND_BAD_FILES
            print("Check passed: every file is a usable image.")
            return 0
        ingest(check, args.output, skip_bad_files=config.bad_files == "skip", image_size=args.image_size,
               rows_per_file=args.rows_per_file, write=write)
        size_flag = f" --image-size {args.image_size}" if args.image_size else ""
        print(f"Parquet dataset written to {args.output}; train with: python -m jobs.train --data-dir {args.output}"
              f"{size_flag}")
        return 0

    return run_command(body, quiet=args.quiet, ray_work="the ingest on Ray")


if __name__ == "__main__":
    exit_after(main)
