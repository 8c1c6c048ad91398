"""Evaluate an exported model on a labelled dataset: `python -m jobs.evaluate --help`.

  python -m jobs.evaluate --model runs/X --data-dir /data/pets --output-dir runs/X/eval-pets

--model is a run directory (or its model/ SavedModel, or a registry's champion); --data-dir holds
class folders or Parquet shards, or train/ and validation/ (then --split picks one). Writes
metrics.json (accuracy, loss, per-class precision/recall/F1, confusion matrix), confusion_matrix.png
and most_confident_errors.png (the images the model got wrong with the highest confidence).
Image files that cannot be used are left out and listed, not fatal; a bad Parquet row stops it (re-ingest).
"""
import argparse
import datetime

import tl_core  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from jobs.cli import add_quiet_argument, exit_after, run_command


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run directory or SavedModel directory (a path or an s3:// URI)")
    parser.add_argument("--data-dir", help="labelled images (default: the built-in sample's validation split)")
    parser.add_argument("--split", default="validation", help="used when --data-dir has split folders (default validation)")
    parser.add_argument("--output-dir", help="where the results go, a path or an s3:// URI (default runs/evaluate-<UTC timestamp>)")
    parser.add_argument("--overwrite", action="store_true", help="write into an --output-dir that already holds files "
                        "(never a training run's directory)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per model call (default 64)")
    parser.add_argument("--worst", type=int, default=16, help="mistakes shown in most_confident_errors.png (default 16)")
    parser.add_argument("--cache-dir", help="asset cache, for the built-in sample")
    add_quiet_argument(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    output = args.output_dir or f"runs/evaluate-{stamp}"

    def body() -> None:
        from tl_core import storage
        from tl_core.run_dir import check_results_dir
        from tl_core.serving.evaluate import evaluate_to_directory, format_report

        check_results_dir(output, overwrite=args.overwrite, what="the evaluation", data_dir=args.data_dir)
        with storage.written_locally(output) as local:  # on disk, or uploaded to a URI once complete
            metrics = evaluate_to_directory(args.model, args.data_dir, local, split=args.split,
                                            batch_size=args.batch_size, worst=args.worst, cache_dir=args.cache_dir)
        print(f"{format_report(metrics)}\nResults in {output}")

    return run_command(body, quiet=args.quiet)


if __name__ == "__main__":
    exit_after(main)
