"""Turn class folders into Parquet shards for a cluster: `python -m jobs.ingest --help`.

  python -m jobs.ingest --data-dir data/ --output /mnt/shared/data-parquet/

reads data/train/<class>/* and data/validation/<class>/* and writes
<output>/train/part-NNNNN.parquet and <output>/validation/part-NNNNN.parquet (columns: image bytes as
encoded in the source file, label, class_name, path). `python -m jobs.train --data-dir <output>`
then trains on them, locally or on Ray, reading a few large files instead of many small ones.
"""
import argparse
import sys
from pathlib import Path

import tl_core  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="directory with train/ and validation/ class folders "
                        "(default: the built-in cats-vs-dogs sample)")
    parser.add_argument("--output", required=True, help="directory for the Parquet dataset (must not exist)")
    parser.add_argument("--rows-per-file", type=int, default=5000, help="images per Parquet file (default 5000)")
    parser.add_argument("--cache-dir", help="asset cache, for the built-in sample")
    args = parser.parse_args(argv)
    from tl_core.assets import AssetError, cache_dir
    from tl_core.data import DatasetError, list_image_folder
    from tl_core.parquet_data import write_parquet_shards
    from tl_core.sample_data import prepare_cats_vs_dogs

    output = Path(args.output)
    try:
        if output.exists() and any(output.iterdir()):
            raise DatasetError(f"{output} already holds files: choose a new --output directory")
        if args.rows_per_file <= 0:
            raise DatasetError(f"--rows-per-file must be positive, got {args.rows_per_file}")
        data_dir = Path(args.data_dir) if args.data_dir else prepare_cats_vs_dogs(cache_dir(args.cache_dir))
        train = list_image_folder(data_dir / "train")
        validation = list_image_folder(data_dir / "validation", train.class_names)
        for split, folder in (("train", train), ("validation", validation)):
            print(f"{split}: {len(folder)} images, classes {folder.class_names}", flush=True)
            write_parquet_shards(folder, output / split, rows_per_file=args.rows_per_file)
    except (DatasetError, AssetError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Parquet dataset written to {output}; train with: python -m jobs.train --data-dir {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
