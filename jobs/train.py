"""Train an image classifier by transfer learning: `python -m jobs.train --help`.

With no data arguments it trains on the built-in cats-vs-dogs sample with the built-in offline
ImageNet MobileNetV2, so it runs on a machine without internet access.
"""
import argparse
import dataclasses
import sys
from pathlib import Path

import tl_core  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from tl_core.config import RAY_GROUP, SEED_RECIPE, TrainConfig

from jobs.cli import (CHECK_FOUND_BAD_FILES, add_field_arguments, add_quiet_argument, add_tracking_arguments, exit_after,
                      given_fields, run_command, trackers_from_args)


def add_training_arguments(parser: argparse.ArgumentParser, exclude=()) -> None:
    """--config and a flag per TrainConfig field, made from the field's documentation (tl_core/config.py).

    Every flag is optional: an unset flag keeps --config's value or the default."""
    parser.add_argument("--config", help="a saved config.json to start from: the same configuration and seed in a new "
                        "run directory reproduce that run (flags given override it)")
    parser.add_argument("--recipe", choices=("default", "seed"), default="default",
                        help="'seed': the classic recipe exactly (a fresh augmentation and backbone pass every epoch, "
                        f"one Dense layer, constant learning rate: {SEED_RECIPE}); flags given override it")
    add_field_arguments(parser, TrainConfig, exclude)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="check the data and the configuration (every bad file, the backbone, the image size), then stop")
    mode.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last epoch, "
                      "with its saved configuration (only --epochs and --fine-tune-epochs may change)")
    mode.add_argument("--overwrite", action="store_true", help="replace the run in --output-dir")
    mode.add_argument("--show-batch", nargs="?", const="augmented_batch.png", metavar="PNG",
                      help="check the data, draw the first training batch exactly as the model would receive it "
                      "(decoded, resized, augmented) into PNG (default augmented_batch.png), and stop: no run, no training")
    parser.add_argument("--audit", action="store_true", dest="audit_first",
                        help="with --check: audit the data too (docs/audit.md), into runs/audit-<UTC timestamp>")
    add_tracking_arguments(parser)
    add_quiet_argument(parser)
    args = parser.parse_args(argv)
    if args.audit_first and not args.check:
        parser.error("--audit goes with --check (a run audits its data itself; --no-audit turns that off)")
    return args


# The options only Ray Train has (config.py's RAY_GROUP): giving any of them runs the job on Ray.
RAY_FLAGS = tuple(field.name for field in dataclasses.fields(TrainConfig) if field.metadata.get("group") == RAY_GROUP)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The configuration the flags ask for.

    --config FILE: that configuration and seed, in a new run directory unless --output-dir names one
    (the same command twice gives two runs with the same weights). --resume: the configuration saved
    in the run directory (--output-dir, or --config's); flags given must agree with it, except --epochs.
    A Ray option (--num-workers, --use-gpu, ...) runs the job on Ray Train: none is ignored.
    """
    overrides = given_fields(args, TrainConfig)
    if any(getattr(args, name, None) is not None for name in RAY_FLAGS):
        overrides["ray"] = True
    recipe = SEED_RECIPE if getattr(args, "recipe", "default") == "seed" else {}
    # A saved config.json is that run's configuration; a file written by hand adds its values to the recipe's.
    from_file = TrainConfig.from_json(args.config, base=recipe) if args.config else None
    if getattr(args, "resume", False):
        from tl_core.run_dir import resume_config

        run_dir = args.output_dir or (from_file.output_dir if from_file else None)
        if not run_dir:
            raise ValueError("--resume needs the run directory: --output-dir runs/X")
        # A --config other than the run's own, and --recipe, count as flags: settings that differ are refused.
        given = {**(dataclasses.asdict(from_file) if from_file else {}), **recipe, **overrides}
        return resume_config(run_dir, given)
    if from_file and "output_dir" not in overrides:
        from_file = dataclasses.replace(from_file, output_dir=None)  # reproduce into a new run directory
    return dataclasses.replace(from_file or TrainConfig(**recipe), **overrides)


def resume_hint(config) -> str:
    return (f"Completed epochs are checkpointed in {config.output_dir}; continue with:\n"
            f"  python -m jobs.train --resume --output-dir {config.output_dir}")


def main(argv=None) -> int:
    args = parse_args(argv)
    config = None

    def body() -> int | None:
        nonlocal config
        from tl_core.run_dir import default_output_dir
        from tl_core.training import job

        config = config_from_args(args)
        config = dataclasses.replace(config, output_dir=config.output_dir or default_output_dir())
        if args.show_batch:
            job.show_batch(config, Path(args.show_batch))
            print(f"Wrote {args.show_batch}: training images as the model would receive them (with --feature-views, the "
                  "feature bank's views), each with its class name. Nothing was trained.")
            return
        if args.check:
            from tl_core.data.sources import BadFilesError

            try:
                checked = job.check(config)
            except BadFilesError as error:
                print(f"error: {error}", file=sys.stderr)
                return CHECK_FOUND_BAD_FILES
            print(f"Check passed: the data and the configuration are ready to train"
                  f"{f' ({len(checked.skipped)} file(s) would be skipped)' if checked.skipped else ''}.")
            if args.audit_first:  # the data audit too, before any training
                from tl_core.audit import audit_sources, summary

                sources, audit_dir = checked.sources, Path(default_output_dir("audit-"))
                report = audit_sources(config, {"train": sources.train, "validation": sources.validation}, sources.data_dir,
                                    audit_dir)
                print(summary(report, audit_dir))
            return
        metrics = job.run(config, overwrite=args.overwrite, resume=args.resume, trackers=trackers_from_args(args))
        print(f"Validation accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}; "
              f"artifacts in {config.output_dir}")

    def note(error: BaseException) -> str | None:
        """After a failure or an interruption, how to continue (never for a refused run directory)."""
        from tl_core.run_dir import RunDirectoryError

        if config is None or isinstance(error, RunDirectoryError):
            return None
        from tl_core.training.job import has_checkpoint
        from tl_core.training.run_store import StoreLost

        if isinstance(error, StoreLost) and error.kept:
            return None  # its message says how to finish the upload of the finished run
        if has_checkpoint(config) or (isinstance(error, StoreLost) and error.resumable):
            return resume_hint(config)  # e.g. the disk filled up, Ctrl-C, or the store gone (its epochs stay there)
        return "No epoch was completed." if isinstance(error, KeyboardInterrupt) else None

    return run_command(body, note=note, quiet=args.quiet)


if __name__ == "__main__":
    exit_after(main)
