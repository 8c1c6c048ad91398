"""Predict classes for many images with an exported model: `python -m jobs.predict --help`.

  python -m jobs.predict --model runs/X --input /data/new_photos --output predictions/

--input is a folder (searched recursively), a .txt file with one image path per line, or Parquet
(a file, or a directory of them, with an image column as jobs.ingest writes). Writes Parquet under
--output: path, predicted_class, confidence, p_<class> for every class, and error (why a file could
not be used: unreadable, not an image, too large; its other columns are then empty). Locally it
streams in chunks with bounded memory; with --ray it runs as a Ray Data map_batches job on the
cluster (--concurrency model replicas, one GPU each with --use-gpu).
"""
import argparse

import tl_core  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from jobs.cli import add_quiet_argument, exit_after, run_command


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run directory or SavedModel directory (a path or an s3:// URI)")
    parser.add_argument("--input", required=True, help="folder of images, .txt list of paths, or Parquet")
    parser.add_argument("--output", required=True,
                        help="directory for the Parquet predictions, a path or an s3:// URI (must not hold files)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per model call (default 64)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="images read at a time (default 1024)")
    parser.add_argument("--ray", action="store_true", help="run on Ray Data across the cluster")
    parser.add_argument("--concurrency", type=int, default=2, help="with --ray: model replicas (default 2)")
    parser.add_argument("--use-gpu", action="store_true", help="with --ray: one GPU per replica")
    add_quiet_argument(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    def body() -> None:
        from tl_core import storage
        from tl_core.run_dir import claim_output
        from tl_core.serving.evaluate import ExportedModel
        from tl_core.serving.predict import ParquetFiles, list_inputs, predict_to_parquet

        if min(args.batch_size, args.chunk_size, args.concurrency) <= 0:
            raise ValueError("--batch-size, --chunk-size and --concurrency must be positive")
        output = args.output  # a path or a URI
        if args.ray:
            from tl_core import ray_session

            ray_session.check()  # ray.init() would wait without end where no Ray answers
        claim_output(output, flag="--output")
        model = ExportedModel(args.model)
        inputs = list_inputs(args.input)
        if not inputs:
            raise ValueError(f"{args.input} holds no files to predict")
        print(f"Predicting {len(inputs)} {'Parquet file(s)' if isinstance(inputs, ParquetFiles) else 'image(s)'} "
              f"with {model.path} (classes {model.class_names})", flush=True)
        if args.ray:
            from tl_core.serving.predict_ray import predict_on_ray

            summary = predict_on_ray(model.path, inputs, output, batch_size=args.batch_size,
                                     chunk_size=args.chunk_size, concurrency=args.concurrency, use_gpu=args.use_gpu)
        else:
            with storage.written_locally(output) as local:
                summary = predict_to_parquet(model, inputs, local, batch_size=args.batch_size, chunk_size=args.chunk_size)
        print(f"{summary['rows']} rows written to {storage.display(output)}; {summary['errors']} could not be used "
              "(see the error column)")

    return run_command(body, quiet=args.quiet)


if __name__ == "__main__":
    exit_after(main)
