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
import sys
from pathlib import Path

import tl_core  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run directory or SavedModel directory")
    parser.add_argument("--data-dir", help="labelled images (default: the built-in sample's validation split)")
    parser.add_argument("--split", default="validation", help="used when --data-dir has split folders (default validation)")
    parser.add_argument("--output-dir", help="where the results go (default runs/evaluate-<UTC timestamp>)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per model call (default 64)")
    parser.add_argument("--worst", type=int, default=16, help="mistakes shown in most_confident_errors.png (default 16)")
    parser.add_argument("--cache-dir", help="asset cache, for the built-in sample")
    args = parser.parse_args(argv)
    from tl_core import artifacts
    from tl_core.run_dir import CONFUSION_PLOT, METRICS_FILE
    from tl_core.model.assets import AssetError, cache_dir
    from tl_core.data.images import ImageFolder, display_path
    from tl_core.serving.evaluate import ExportedModel, evaluate
    from tl_core.data.sources import data_directory, labelled_split
    from tl_core.data.checks import format_bad_files, without_bad_files

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    output = Path(args.output_dir or f"runs/evaluate-{stamp}")
    try:
        if args.batch_size <= 0 or args.worst < 0:
            raise ValueError("--batch-size must be positive and --worst not negative")
        model = ExportedModel(args.model)
        data_dir = data_directory(args.data_dir, cache_dir(args.cache_dir))
        source, bad = without_bad_files(labelled_split(data_dir, args.split))
        if bad:
            print(f"Leaving out {len(bad)} file(s) that cannot be used:\n{format_bad_files(bad)}")
        print(f"Evaluating {model.path} on {len(source)} images of {display_path(str(data_dir))} ...", flush=True)
        metrics, mistakes = evaluate(model, source, batch_size=args.batch_size, worst=args.worst)
        metrics["model"], metrics["data_dir"] = str(model.path), str(data_dir)
        metrics["left_out"] = [str(item) for item in bad]

        def name(position):
            return Path(source.paths[position]).name if isinstance(source, ImageFolder) else f"row {position}"

        mistakes_table = [{"image": name(position), "true": model.class_names[truth],
                           "predicted": model.class_names[predicted], "confidence": confidence}
                          for confidence, position, truth, predicted, _ in mistakes]
        metrics["most_confident_errors"] = mistakes_table
        artifacts.write_json(output / METRICS_FILE, metrics)
        artifacts.plot_confusion_matrix(metrics["confusion_matrix"], model.class_names, output / CONFUSION_PLOT,
                                        title="Confusion matrix")
        artifacts.plot_contact_sheet(
            [mistake[4] for mistake in mistakes],
            [f"{row['image']}\ntrue {row['true']}, predicted {row['predicted']} ({row['confidence']:.2f})"
             for row in mistakes_table],
            output / "most_confident_errors.png", title="Most confidently wrong")
    except (ValueError, AssetError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"accuracy {metrics['accuracy']:.4f}  loss {metrics['loss']:.4f}  images {metrics['num_examples']}")
    print(f"{'class':<20} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}")
    for row in metrics["per_class"]:
        print(f"{row['class']:<20} {row['precision']:>9.4f} {row['recall']:>9.4f} {row['f1']:>9.4f} {row['support']:>9}")
    print(f"Results in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
