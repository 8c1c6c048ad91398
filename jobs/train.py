"""Train an image classifier by transfer learning: `python -m jobs.train --help`.

With no data arguments it trains on the built-in cats-vs-dogs sample with the built-in offline
ImageNet MobileNetV2, so it runs on a machine without internet access.
"""
import argparse
import dataclasses
import signal
import sys
from pathlib import Path

import tl_core  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from tl_core.config import TrainConfig


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The TrainConfig flags (every one optional: unset flags keep --config's or the default value)."""
    defaults = TrainConfig()
    parser.add_argument("--config", help="a saved config.json to start from: the same configuration and seed in a new "
                        "run directory reproduce that run (flags given override it)")
    parser.add_argument("--data-dir", help="directory with train/ and validation/ class folders "
                        "(default: the built-in cats-vs-dogs sample)")
    parser.add_argument("--validation-split", type=float, help="fraction of each class held out when --data-dir "
                        f"has class folders but no train/ and validation/ (default {defaults.validation_split})")
    parser.add_argument("--skip-bad-files", dest="bad_files", action="store_const", const="skip",
                        help="train without files that cannot be used, listing them in the run's skipped_files.json "
                        "(default: stop and list them)")
    parser.add_argument("--min-image-side", type=int, help=f"smaller images are bad files (default {defaults.min_image_side})")
    parser.add_argument("--max-image-megapixels", type=float,
                        help=f"larger images are bad files, refused before decoding (default {defaults.max_image_megapixels:g})")
    parser.add_argument("--backbone", help=f"TF Hub handle, local SavedModel dir, or 'mobilenet_v2' "
                        f"(built-in, offline; default {defaults.backbone})")
    parser.add_argument("--image-size", type=int, help=f"default {defaults.image_size}")
    parser.add_argument("--batch-size", type=int, help=f"default {defaults.batch_size}")
    parser.add_argument("--epochs", type=int, help=f"default {defaults.epochs}")
    parser.add_argument("--learning-rate", type=float, help=f"default {defaults.learning_rate}")
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                        help="train without the ImageDataGenerator-style augmentation")
    parser.add_argument("--cache-features", dest="cache_features", action="store_true", default=None,
                        help="run the backbone once per image and train the head on kept features "
                        "(needs --no-augment; on by default when augmentation is off)")
    parser.add_argument("--feature-cache-memory-mb", type=int,
                        help="cached features larger than this go to a Parquet file in the run directory "
                        f"(default {defaults.feature_cache_memory_mb})")
    parser.add_argument("--no-cache-features", dest="cache_features", action="store_false",
                        help="run the backbone every epoch even without augmentation")
    parser.add_argument("--fine-tune-epochs", type=int,
                        help="after the head's epochs, train the top of the backbone this many more epochs (default 0: off)")
    parser.add_argument("--fine-tune-layers", type=int, help="backbone layers unfrozen from the top, BatchNorm excepted; "
                        f"0 = all (default {defaults.fine_tune_layers}, which needs the built-in mobilenet_v2: with "
                        "another backbone, an opaque TF Hub module, give 0 to fine-tune all of it)")
    parser.add_argument("--fine-tune-learning-rate", type=float, help=f"default {defaults.fine_tune_learning_rate:g}")
    parser.add_argument("--seed", type=int, help=f"default {defaults.seed}")
    parser.add_argument("--jit-compile", dest="jit_compile", action=argparse.BooleanOptionalAction,
                        help="XLA-compile the training step (default off; see benchmarks/gpu.py)")
    parser.add_argument("--bf16", action="store_true", default=None,
                        help="run the backbone in bfloat16 (built-in mobilenet_v2; for GPUs, see benchmarks/gpu.py)")
    parser.add_argument("--export-tflite", action="store_true", default=None,
                        help="also export TFLite models (float32 and dynamic-range quantized) with labels.txt")
    parser.add_argument("--cache-dir", help="asset cache (default $TL_CACHE_DIR or ~/.cache/tl_core)")
    ray_group = parser.add_argument_group("distributed training on Ray Train")
    ray_group.add_argument("--ray", action="store_true", default=None,
                           help="run on Ray Train even with one worker (implied by any flag of this group); "
                           "connects to $RAY_ADDRESS or the cluster of `ray job submit`, else starts Ray locally")
    ray_group.add_argument("--num-workers", type=int, help="data-parallel workers, one per GPU (default 1)")
    ray_group.add_argument("--use-gpu", action="store_true", default=None, help="give each worker GPUs")
    ray_group.add_argument("--cpus-per-worker", type=int, help=f"default {defaults.cpus_per_worker}")
    ray_group.add_argument("--gpus-per-worker", type=int, help=f"with --use-gpu; default {defaults.gpus_per_worker}")
    ray_group.add_argument("--max-failures", type=int,
                           help=f"worker-group restarts from the last checkpoint (default {defaults.max_failures})")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser)
    parser.add_argument("--output-dir", help="run directory (default runs/<UTC timestamp>)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="check the data and the configuration (every bad file, the backbone, the image size), then stop")
    mode.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last epoch, "
                      "with its saved configuration (only --epochs and --fine-tune-epochs may change)")
    mode.add_argument("--overwrite", action="store_true", help="replace the run in --output-dir")
    return parser.parse_args(argv)


RAY_FLAGS = ("ray", "num_workers", "use_gpu", "cpus_per_worker", "gpus_per_worker", "max_failures")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The configuration the flags ask for.

    --config FILE: that configuration and seed, in a new run directory unless --output-dir names one
    (the same command twice gives two runs with the same weights). --resume: the configuration saved
    in the run directory (--output-dir, or --config's); flags given must agree with it, except --epochs.
    A Ray option (--num-workers, --use-gpu, ...) runs the job on Ray Train: none is ignored.
    """
    overrides = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)
                 if getattr(args, field.name, None) is not None}
    if any(getattr(args, name, None) is not None for name in RAY_FLAGS):
        overrides["ray"] = True
    from_file = TrainConfig.from_json(args.config) if args.config else None
    if getattr(args, "resume", False):
        from tl_core.run_dir import resume_config

        run_dir = args.output_dir or (from_file.output_dir if from_file else None)
        if not run_dir:
            raise ValueError("--resume needs the run directory: --output-dir runs/X")
        # A --config other than the run's own counts as flags: settings that differ are refused.
        given = {**(dataclasses.asdict(from_file) if from_file else {}), **overrides}
        return resume_config(run_dir, given)
    if from_file and "output_dir" not in overrides:
        from_file = dataclasses.replace(from_file, output_dir=None)  # reproduce into a new run directory
    return dataclasses.replace(from_file or TrainConfig(), **overrides)


def _stop_on_sigterm(signum, frame):
    # A scheduler's SIGTERM takes the same path as Ctrl-C: the epoch in progress is dropped and the
    # last completed epoch's checkpoint (written atomically) is what --resume continues from.
    raise KeyboardInterrupt


def resume_hint(config) -> str:
    return (f"Completed epochs are checkpointed in {config.output_dir}; continue with:\n"
            f"  python -m jobs.train --resume --output-dir {config.output_dir}")


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    import tensorflow as tf

    from tl_core.training import job
    from tl_core.model.assets import AssetError
    from tl_core.run_dir import RunDirectoryError, default_output_dir

    config = None
    try:
        config = config_from_args(args)
        config = dataclasses.replace(config, output_dir=config.output_dir or default_output_dir())
        if args.check:
            checked, skipped = job.check(config)
            print(f"Check passed: the data and the configuration are ready to train"
                  f"{f' ({len(skipped)} file(s) would be skipped)' if skipped else ''}.")
            return 0
        metrics = job.run(config, overwrite=args.overwrite, resume=args.resume)
    # The project's own input errors (DatasetError, BackboneError, RunDirectoryError, ...) are ValueErrors.
    except (ValueError, AssetError, OSError, tf.errors.OpError) as error:
        message = error.message.strip().splitlines()[0] if isinstance(error, tf.errors.OpError) else error
        print(f"error: {message}", file=sys.stderr)
        if config is not None and _has_checkpoint(config) and not isinstance(error, RunDirectoryError):
            print(resume_hint(config), file=sys.stderr)  # e.g. the disk filled up during training
        return 2
    except KeyboardInterrupt:
        if config is None or not _has_checkpoint(config):
            print("Interrupted before the first epoch was completed.", file=sys.stderr)
            return 130
        print(f"Interrupted. {resume_hint(config)}", file=sys.stderr)
        return 130
    except Exception as error:
        if not is_ray_failure(error):
            raise
        print(f"error: distributed training failed: {first_line(error)}", file=sys.stderr)
        return 1
    print(f"Validation accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}; "
          f"artifacts in {config.output_dir}")
    return 0


def is_ray_failure(error: Exception) -> bool:
    """Ray wraps a worker's failure in its own exceptions (TrainingFailedError and friends)."""
    return type(error).__module__.split(".")[0] == "ray"


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _has_checkpoint(config) -> bool:
    from tl_core.run_dir import CHECKPOINT_DIR, RAY_DIR

    return (Path(config.output_dir) / CHECKPOINT_DIR).exists() or (Path(config.output_dir) / RAY_DIR).exists()


if __name__ == "__main__":
    sys.exit(main())
